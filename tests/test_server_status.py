"""`serve`'s periodic status line: exact figures from given counters (sans-IO), and the
real server's log while a real client streams through it."""

import signal
import socket
import subprocess
import sys

import pytest

from stemlink.udp_server.status import ServerSample, ServerStatus


def sample(now, sessions=0, rx=0, dropped=0, compute=(), queued=0):
    return ServerSample(now, sessions, rx, dropped, list(compute), sum(compute), queued)


def test_a_replaced_worker_starts_its_counts_over():
    st = ServerStatus()
    st.update(sample(0.0, 1, compute=[1_000_000] * 50))
    line = st.update(sample(1.0, 1, compute=[4_000_000] * 10))  # a new, shorter list
    assert "worker load 4 % (10 blocks/s, compute p50 4.00 ms" in line


def test_rates_load_and_drops_over_the_interval():
    st = ServerStatus()
    compute = [2_000_000] * 10  # ten 2 ms blocks before the first line: not counted
    assert st.update(sample(100.0, 1, rx=50, dropped=3, compute=compute)) is None
    compute += [5_000_000] * 99 + [40_000_000]  # 100 blocks in the next 2 s
    line = st.update(sample(102.0, 2, rx=50 + 700, dropped=3 + 4, compute=compute, queued=5))
    # worker busy 99*5 + 40 = 535 ms of 2000 ms
    assert line == ("status: 2 sessions, in 350 datagrams/s, worker load 27 % (50 blocks/s, "
                    "compute p50 5.00 ms, p99 5.35 ms), queue 5, drops 4 (total 7)")


def test_load_is_capped_at_the_whole_interval():
    st = ServerStatus()
    st.update(sample(0.0, 1))
    # one 3 s block finishing in a 1 s interval: the worker was busy the whole interval
    assert "worker load 100 % (1 blocks/s" in st.update(sample(1.0, 1, compute=[3_000_000_000]))


def test_an_idle_server_prints_nothing_and_one_session_is_singular():
    st = ServerStatus()
    st.update(sample(0.0))
    assert st.update(sample(10.0)) is None  # nothing happened
    assert st.update(sample(20.0, rx=3, dropped=3)) == (
        "status: 0 sessions, in 0 datagrams/s, worker load 0 % (0 blocks/s, no compute), "
        "queue 0, drops 3 (total 3)")
    line = st.update(sample(30.0, sessions=1, rx=3, dropped=3))
    assert line.startswith("status: 1 session, in 0 datagrams/s")


def test_serve_logs_status_lines_while_a_client_streams(model_dir, tmp_path, example):
    import soundfile as sf

    x, sr = example
    sf.write(tmp_path / "clip.wav", x[:, : 3 * sr].T, sr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "stemlink", "serve", "--model", str(model_dir),
                          "--port", str(port), "--status-interval", "1"],
                         stderr=subprocess.PIPE, text=True)
    try:
        assert "stemlink serving" in p.stderr.readline()
        r = subprocess.run([sys.executable, "-m", "stemlink", "send", str(tmp_path / "clip.wav"),
                            "--server", f"127.0.0.1:{port}", "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        p.send_signal(signal.SIGINT)
        log = p.communicate(timeout=30)[1]
    finally:
        if p.poll() is None:
            p.kill()
    lines = [ln.split("stemlink.server ", 1)[1] for ln in log.splitlines() if " status: " in ln]
    busy = [ln for ln in lines if ln.startswith("status: 1 session,")]
    assert busy, log
    # the client's AUDIO datagrams were counted and the worker's blocks measured (no rate
    # is asserted: the machine's load decides it)
    rates = [float(ln.split(" in ")[1].split(" ")[0]) for ln in busy]
    assert max(rates) > 0
    assert any("compute p50" in ln for ln in busy)
    assert '"event":"session_end"' in log and '"reason":"bye"' in log
    assert "Traceback" not in log


@pytest.mark.parametrize("interval", ["-1", "x"])
def test_status_interval_is_validated(interval):
    r = subprocess.run([sys.executable, "-m", "stemlink", "serve", "--status-interval",
                        interval], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--status-interval" in r.stderr and "Traceback" not in r.stderr
