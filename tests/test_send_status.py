"""`send`'s status line: exact numbers from generated timings (sans-IO), the same figures
as the final summary, and the real thing under a pseudo-terminal against a real server."""

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from stemlink.udp_client.sender import _Receiver
from stemlink.udp_client.status import LOST_AFTER_S, SendStatus
from tests.terminal import COLS, run_in_pty

SR, B, D, STEMS = 44100, 256, 5119, 2
MS = 1_000_000  # ns


def receiver(frames: int, now_ns: int, seed: int = 0):
    """A receiver whose blocks were sent at the audio rate up to `now_ns`, with stem
    blocks arriving 20..80 ms later, some never (lost)."""
    nblocks = -(-(frames + D) // B)
    rx = _Receiver()
    rx.setup(STEMS, 2, nblocks, B, 44100)
    rng = np.random.default_rng(seed)
    period = B * 1e9 / SR
    sent = np.arange(nblocks) * period
    k_sent = int(np.sum(sent <= now_ns))
    rx.send_ns[:k_sent] = sent[:k_sent]
    rx.sent = k_sent
    turn = rng.uniform(20, 80, (STEMS, nblocks)) * MS
    arrival = sent[None, :] + turn
    arrival[rng.random((STEMS, nblocks)) < 0.03] = np.nan  # lost on the way
    arrival[arrival > now_ns] = np.nan  # not yet arrived
    arrival[:, k_sent:] = np.nan
    rx.arrival_ns[:] = arrival
    rx.received = int(np.sum(np.isfinite(arrival)))
    rx.rtt_ns = [int(x * MS) for x in (1.0, 2.0, 3.0)]
    return rx


def report(rx, frames, jitter_ms):
    acc = SimpleNamespace(model="m", stems=["a", "b"], preset=1, sample_rate=SR,
                          synthesis_hop=1024, mask_hold=1, hop_frames=2)
    opts = SimpleNamespace(jitter_ms=jitter_ms, realtime=True)
    return rx.report(acc, {}, frames, D, B, SimpleNamespace(counters={}), opts)


@pytest.mark.parametrize("jitter_ms", [30.0, 60.0])
def test_status_at_the_end_agrees_with_the_summary(jitter_ms):
    frames = 3 * SR
    end = int(10e9)  # long after the last block: everything that will arrive has
    rx = receiver(frames, end)
    st = SendStatus(sample_rate=SR, block=B, delay=D, frames=frames, jitter_ms=jitter_ms)
    p = st.measure(rx, end, 10.0)
    rep = report(rx, frames, jitter_ms)
    assert (p.sent, p.received, p.expected) == (rep.sent, rep.received, rep.expected)
    assert p.lost == rep.lost > 0
    assert p.late == rep.late > 0
    assert p.e2e_p50_ms == pytest.approx(rep.latency_ms["p50"], rel=1e-12)
    assert p.e2e_p99_ms == pytest.approx(rep.latency_ms["p99"], rel=1e-12)
    assert p.rtt_ms == 2.0
    assert p.total_s == pytest.approx(rx.nblocks * B / SR)


def test_status_mid_stream_counts_only_what_is_overdue():
    frames = 5 * SR
    now = int(2.5e9)
    rx = receiver(frames, now, seed=1)
    st = SendStatus(sample_rate=SR, block=B, delay=D, frames=frames, jitter_ms=60.0)
    p = st.measure(rx, now, 2.5)
    overdue = (now - rx.send_ns) > LOST_AFTER_S * 1e9
    want_lost = int(np.sum(np.isnan(rx.arrival_ns[:, overdue])))
    assert p.lost == want_lost
    assert p.lost < int(np.sum(np.isnan(rx.arrival_ns[:, : rx.sent])))  # recent ones: not yet
    turnaround = (rx.arrival_ns - rx.send_ns[None, :]) / MS
    assert p.late == int(np.sum(turnaround > 60.0)) > 0
    # end-to-end: only blocks whose whole answer (D later) has arrived count
    lat = []
    for k in range(-(-frames // B)):
        k1, k2 = (k * B + D) // B, (k * B + D + B - 1) // B
        done = rx.arrival_ns[:, k1:k2 + 1]
        if not np.isnan(done).any():
            lat.append((done.max() - rx.send_ns[k]) / MS)
    assert len(lat) > 10
    assert p.e2e_p99_ms == pytest.approx(np.percentile(lat, 99), rel=1e-12)
    line = p.line()
    assert line.startswith("2.5/") and f"lost {want_lost}" in line and "RTT 2.00 ms" in line


def test_status_before_anything_came_back():
    rx = _Receiver()
    rx.setup(STEMS, 2, 100, B, 44100)
    p = SendStatus(sample_rate=SR, block=B, delay=D, frames=100 * B - D,
                   jitter_ms=60.0).measure(rx, 0, 0.0)
    assert (p.sent, p.received, p.lost, p.late) == (0, 0, 0, 0)
    assert math.isnan(p.rtt_ms) and math.isnan(p.e2e_p50_ms)
    assert "RTT - ms" in p.line() and "e2e p50/p99 -/- ms" in p.line()


STATUS = re.compile(r"([\d.]+)/([\d.]+) s  sent (\d+)  recv (\d+)  lost (\d+)  "
                    r"late (\d+)  concealed (\d+)  RTT ([\d.-]+) ms  e2e p50/p99 ([\d-]+)/"
                    r"([\d-]+) ms")


@pytest.fixture(scope="module")
def server(model_dir):
    from stemlink.udp_server.server import ServeOptions, ServerThread

    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0)) as st:
        yield st


@pytest.fixture
def clip(tmp_path, example):
    x, sr = example
    p = tmp_path / "clip.wav"
    sf.write(p, x[:, : 4 * sr].T, sr)  # 4 s of the real example, streamed in real time
    return p


def test_send_shows_a_live_status_line_on_a_terminal(server, clip, tmp_path):
    host, port = server.address
    rc, out = run_in_pty(["send", clip, "--server", f"{host}:{port}", "--out", tmp_path / "o",
                          "--preset", "ultra"], timeout=120)
    assert rc == 0, out
    # one line, rewritten in place: each update starts with a carriage return
    updates = [m for m in (STATUS.match(u) for u in out.split("\r")) if m]
    assert len(updates) >= 3, out  # ~4 s of audio + drain, one a second, and a final one
    sent = [int(m[3]) for m in updates]
    assert sent == sorted(sent) and sent[0] < sent[-1]
    elapsed = [float(m[1]) for m in updates]
    assert elapsed == sorted(elapsed)
    total = float(updates[-1][2])
    assert total == pytest.approx((4 * 44100 + 3071) / 44100, abs=0.1)
    # the final update is the summary's state
    summary = re.search(r"packets: sent (\d+) blocks, stem blocks received (\d+)/(\d+), "
                        r"lost (\d+), late (\d+)", out)
    assert summary, out
    last = updates[-1]
    assert (last[3], last[4]) == summary.groups()[:2]  # sent, received
    assert "\x1b[K" in out  # the rest of the old line is erased
    pieces = [u.split("\x1b[K")[0] for u in out.split("\r") if STATUS.match(u)]
    assert all(len(u) < COLS for u in pieces)  # never wider than the terminal (no wrap)


def test_send_prints_no_status_into_a_pipe_or_when_quiet(server, clip, tmp_path):
    host, port = server.address
    args = [sys.executable, "-m", "stemlink", "send", str(clip), "--server",
            f"{host}:{port}", "--out", str(tmp_path / "o"), "--as-fast-as-possible"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout and "recv " not in r.stdout and "packets: sent" in r.stdout
    rc, out = run_in_pty([*args[3:], "--quiet"], timeout=120)
    assert rc == 0 and "\r" not in out.replace("\r\n", "\n") and "packets: sent" in out, out


def test_send_summary_warns_when_much_of_the_output_was_guessed():
    """More than 5 % of the stem blocks lost: the summary says so in a line of its own;
    below that it does not."""
    from stemlink.udp_client.sender import SendReport

    def report(lost):
        return SendReport(files={}, model="m", stems=["vocals", "accompaniment"],
                          preset="monitor",
                          delay=5119, sample_rate=44100, block=256, seconds=1.0, sent=100,
                          received=200 - lost, expected=200, lost=lost, late=0,
                          duplicates=0, concealed=0, bytes_sent=0, bytes_received=0)

    assert "warning" not in report(10).summary()
    lines = report(60).summary().splitlines()
    assert lines[-1].startswith("warning: 30 % of the stem blocks never arrived")
