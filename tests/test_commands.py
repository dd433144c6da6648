"""The server and the demo as processes, the way an operator and a newcomer run them."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signals(model_dir, tmp_path, sig):
    port = free_udp_port()
    stats = tmp_path / "stats.json"
    p = subprocess.Popen([sys.executable, "-m", "stemlink", "serve", "--model", str(model_dir),
                          "--port", str(port), "--compute-stats", str(stats)],
                         stderr=subprocess.PIPE, text=True)
    try:
        banner = p.stderr.readline()
        assert "stemlink serving" in banner and f":{port}" in banner and "D = " in banner
        # a real client session while it runs
        from stemlink.export.checkpoint import example_audio

        r = subprocess.run([sys.executable, "-m", "stemlink", "send", str(example_audio()),
                            "--server", f"127.0.0.1:{port}", "--out", str(tmp_path / "o"),
                            "--as-fast-as-possible", "--preset", "ultra"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "preset ultra, D = 1023 samples" in r.stdout, r.stderr
        # the client asks for its own synthesis hop and mask hold; the server reports them
        r = subprocess.run([sys.executable, "-m", "stemlink", "send", str(example_audio()),
                            "--server", f"127.0.0.1:{port}", "--out", str(tmp_path / "o2"),
                            "--as-fast-as-possible", "--preset", "ultra",
                            "--synthesis-hop", "256", "--mask-hold", "4"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "D = 511 samples (11.6 ms; synthesis hop 256, mask hold 4, H 1: one " \
            "inference every 23.2 ms)" in r.stdout
        # one the engine refuses: one line, non-zero exit, no traceback
        r = subprocess.run([sys.executable, "-m", "stemlink", "send", str(example_audio()),
                            "--server", f"127.0.0.1:{port}", "--out", str(tmp_path / "o3"),
                            "--synthesis-hop", "300"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "synthesis hop must divide" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        time.sleep(0.3)
        p.send_signal(sig)
        rest = p.communicate(timeout=30)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0
    assert "Traceback" not in rest
    events = [json.loads(ln[ln.index("{"):]) for ln in rest.splitlines()
              if '{"event"' in ln]  # one structured line per session start and end
    starts = [e for e in events if e["event"] == "session_start"]
    assert len(starts) == 2  # the refused one never started
    start = starts[0]
    assert (start["preset"], start["H"], start["L"], start["synthesis"], start["delay"]) == (
        "ultra", 1, 0, "asymmetric", 1023)
    ends = {e["session"]: e for e in events if e["event"] == "session_end"}
    assert ends[start["session"]]["reason"] == "bye" and len(ends) == 2
    assert "server stopped" in rest
    assert json.loads(stats.read_text())["compute_ns"]


def test_serve_refuses_a_busy_port_and_a_missing_model(model_dir, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "stemlink", "serve", "--model",
                            str(model_dir), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "stemlink", "serve", "--model",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_demo_is_the_readme_main_job(model_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "stemlink", "demo", "--model", str(model_dir),
                        "--out", str(tmp_path / "demo")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lost 0" in r.stdout and "end-to-end latency ms" in r.stdout
    for stem in ("vocals", "accompaniment"):
        assert (tmp_path / "demo" / f"{stem}.wav").stat().st_size > 1_000_000
