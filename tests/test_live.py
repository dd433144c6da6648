"""The live client's pieces that need no sound card: monitor mix, playout, resampling."""

import numpy as np
import pytest

from stemlink.udp_client.core import ClientError
from stemlink.udp_client.live import Playout
from stemlink.udp_client.mix import parse_mix
from tests.conftest import lowpass

STEMS = ["vocals", "accompaniment"]


def test_parse_mix():
    np.testing.assert_array_equal(parse_mix("accompaniment", STEMS), [0, 1])
    np.testing.assert_allclose(parse_mix("vocals=0.2,accompaniment=1", STEMS), [0.2, 1])
    for bad in ("drums", "vocals=loud", "vocals=100"):
        with pytest.raises(ClientError):
            parse_mix(bad, STEMS)


def stem_packet(stem, k, value, b=256, c=2):
    """A real STEM datagram (header + s16 payload) of a constant block."""
    from stemlink.wire import packets as pk
    from stemlink.wire.constants import PacketType, SampleFormat

    w = pk.MediaWriter(b, c, SampleFormat.S16LE)
    x = np.full((c, b), value, np.float32) if np.isscalar(value) else value
    d = w.write(PacketType.STEM, x, session=1, seq=k, timestamp=k * b, send_time=0,
                key=bytes(32), stem=stem)
    return pk.decode_header(d), d


def fixed(blocks, b=256, rate=44100):
    from stemlink.udp_client.jitter import JitterConfig

    return JitterConfig(fixed_ms=1000 * blocks * b / rate)


def test_playout_mixes_stems_with_gains_at_the_model_rate():
    po = Playout(STEMS, np.array([0.5, 1.0], np.float32), 2, 256, 44100, 44100, 2, fixed(1))
    for k in range(4):
        po.offer(*stem_packet(0, k, 0.25), 0)
        po.offer(*stem_packet(1, k, 0.5), 0)
    po.service(0.0)
    out = np.zeros((300, 2), np.float32)
    po.fill(out)  # first 256 samples: the playout buffer's stated prefill (1 block)
    np.testing.assert_array_equal(out[:256], 0.0)
    np.testing.assert_array_equal(out[256:], 0.625)
    po.service(0.0)
    po.fill(out)
    np.testing.assert_array_equal(out, 0.625)
    assert po.underruns[0] == 0


def test_every_gain_zero_plays_silence_without_crashing():
    po = Playout(STEMS, np.zeros(2, np.float32), 2, 256, 44100, 44100, 2, fixed(1))
    po.offer(*stem_packet(0, 0, 0.5), 0)
    po.service(0.0)
    out = np.ones((256, 2), np.float32)
    po.fill(out)
    assert not out.any()


def test_playout_resamples_to_the_device_rate_and_folds_to_mono():
    po = Playout(STEMS, np.array([1.0, 0.0], np.float32), 2, 256, 44100, 48000, 1, fixed(1))
    t = np.arange(256 * 40) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    for k in range(40):
        po.offer(*stem_packet(0, k, np.stack([tone[k * 256:(k + 1) * 256]] * 2)), 0)
    outs = []
    for _ in range(30):
        out = np.zeros((320, 1), np.float32)
        po.service(0.0)
        po.fill(out)
        outs.append(out[:, 0].copy())
    y = np.concatenate(outs)[2000:8000]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak_hz = np.argmax(spectrum) * 48000 / y.size
    assert abs(peak_hz - 440) < 10 and 0.25 < np.max(np.abs(y)) < 0.6


def test_playback_underrun_is_counted_and_zero_filled():
    po = Playout(STEMS, np.array([1.0, 1.0], np.float32), 2, 256, 44100, 44100, 2, fixed(1))
    out = np.ones((512, 2), np.float32)
    po.fill(out)  # nothing serviced yet: the ring is dry
    assert not out.any() and po.underruns[0] == 1


def test_capture_overrun_leaves_a_gap_in_the_timestamps():
    from stemlink.udp_client.live import Capture, Uplink

    cap = Capture(44100, 1, seconds=0.05)  # a small ring: 4096 frames at least
    up = Uplink(44100, 1, 44100, 2, 256)
    frames = 1024
    x = np.arange(20 * frames, dtype=np.float32)[:, None] / 1e5
    for k in range(8):  # nobody drains: the ring fills, later callbacks are dropped
        cap.callback(x[k * frames:(k + 1) * frames], frames, None, None)
    assert cap.overruns[0] == 4
    rec = np.zeros(2, np.int64)
    scratch = np.zeros((8192, 1), np.float32)
    sent = []
    while cap.meta.get(rec):
        cap.ring.read(scratch[:rec[1]])
        sent += up.feed(int(rec[0]), scratch[:rec[1]])
    for k in range(8, 10):  # the consumer caught up: capture continues at position 8 * 1024
        cap.callback(x[k * frames:(k + 1) * frames], frames, None, None)
    while cap.meta.get(rec):
        cap.ring.read(scratch[:rec[1]])
        sent += up.feed(int(rec[0]), scratch[:rec[1]])
    ts = [t for t, _ in sent]
    assert ts[:16] == [k * 256 for k in range(16)]  # the 4 callbacks that fitted
    assert ts[16] == 8 * frames  # the next block is stamped where it was captured
    first = sent[16][1][0]
    np.testing.assert_allclose(first, x[8 * frames:8 * frames + 256, 0], rtol=0, atol=0)
    assert up.gaps == 1 and up.gap_blocks == 16


def test_callbacks_allocate_nothing_after_warm_up():
    import tracemalloc

    from stemlink.udp_client.latency import LatencyAccount
    from stemlink.udp_client.live import Capture

    frames = 4096  # one period is 32 KiB: any array made per call would show
    cap = Capture(44100, 2, seconds=2.0)
    po = Playout(STEMS, np.array([1.0, 1.0], np.float32), 2, 256, 44100, 44100, 2, fixed(2))
    # the latency account runs in both callbacks too (live sets it on both)
    cap.account = po.account = account = LatencyAccount(44100, 44100, 1024, 512)
    indata = np.ones((frames, 2), np.float32)
    outdata = np.zeros((frames, 2), np.float32)
    for k in range(64):
        po.offer(*stem_packet(0, k, 0.1), 0)
        po.offer(*stem_packet(1, k, 0.1), 0)
    po.service(0.0)

    def round_(n):
        for _ in range(n):
            cap.callback(indata, frames, None, None)
            po.fill(outdata)
            cap.ring.read(outdata)  # stand-ins for the other threads, outside the trace
            while cap.meta.get(np.zeros(2, np.int64)):
                pass
            po.service(0.0)

    round_(3)
    tracemalloc.start()
    try:
        peak = 0
        for _ in range(10):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            cap.callback(indata, frames, None, None)
            po.fill(outdata)
            cur, p = tracemalloc.get_traced_memory()
            peak = max(peak, p - base)
            tracemalloc.stop()  # the other threads' work is not under test
            cap.ring.read(outdata)
            while cap.meta.get(np.zeros(2, np.int64)):
                pass
            po.service(0.0)
            tracemalloc.start()
    finally:
        tracemalloc.stop()
    assert peak < 2048, peak  # a few small integers; no buffer
    assert account.first_samples is not None  # the playback side did state a position


class FakeDevices:
    """Stands in for PortAudio only (no sound card here): two threads that call the
    client's callbacks at the device rate, one reading a signal, one recording. Everything
    between them (resampling, UDP, the real server and model, jitter buffers, the mix) is
    the real code."""

    class PortAudioError(RuntimeError):
        pass

    def __init__(self, signal: np.ndarray, rate: int, frames: int = 480) -> None:
        self.signal, self.rate, self.frames = signal, rate, frames
        self.recorded: list[np.ndarray] = []

    def query_devices(self, device, kind):
        return {"default_samplerate": float(self.rate), "max_input_channels": 1,
                "max_output_channels": 2}

    def InputStream(self, callback, **kw):  # noqa: N802 (sounddevice's name)
        def feed(k):
            chunk = self.signal[k * self.frames:(k + 1) * self.frames]
            data = np.zeros((self.frames, 1), np.float32)
            data[:chunk.size, 0] = chunk
            callback(data, self.frames, None, None)
        return _Clock(feed, self.frames / self.rate)

    def OutputStream(self, callback, channels, **kw):  # noqa: N802
        def pull(k):
            out = np.zeros((self.frames, channels), np.float32)
            callback(out, self.frames, None, None)
            self.recorded.append(out.copy())
        return _Clock(pull, self.frames / self.rate)


class _Clock:
    def __init__(self, tick, period):
        import threading

        self.tick, self.period = tick, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import time

        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            self.tick(k)
            k += 1
            delay = t0 + k * self.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(2)


def test_live_pipeline_round_trip_through_the_real_server(model_dir, example):
    import asyncio

    import soxr

    from stemlink.udp_client.live import run_live
    from stemlink.udp_server.server import ServeOptions, ServerThread

    x, sr = example
    mono48 = soxr.resample(x[:, :5 * sr].mean(axis=0), sr, 48000).astype(np.float32)
    fake = FakeDevices(mono48, 48000)
    # a fixed playout buffer: the adaptive one may cut samples when it shrinks, which moves
    # the lag this test measures (its own tests are in test_jitter.py)
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0)) as st:
        stats = asyncio.run(run_live(st.address, None, None, "vocals=1,accompaniment=1",
                                     "monitor", b"", 80.0, 256, seconds=6.5, devices=fake))
    y = np.concatenate(fake.recorded)[:, 0]
    assert stats["blocks_sent"] > 1000
    # most stem blocks were played (on a loaded machine some arrive late and are concealed)
    assert stats["jitter"]["pushed"] > stats["blocks_sent"]
    assert stats["capture_overruns"] == 0
    # the stems' sum is the input band-limited to 11 kHz, delayed by at least D
    n = 1 << 19
    a = lowpass(mono48, 48000, 10_000)
    b = lowpass(y, 48000, 10_000)
    xc = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lag = int(np.argmax(xc[: n // 2]))
    d48 = stats["delay_samples"] * 48000 / 44100
    assert d48 <= lag <= d48 + 0.5 * 48000, (lag, d48)
    # Content, window by window: a playback underrun on a busy machine (counted in the
    # stats) shifts everything after it by the underrun's length, so each 0.25 s window
    # finds its own lag near the global one; most windows must be the input itself.
    win, reach = 12_000, 4_800
    corrs = []
    for start in range(lag + 48_000, lag + 4 * 48_000, win):
        seg_b = b[start:start + win]
        best = 0.0
        for d in range(-reach, reach + 1, 16):
            ref = a[start - lag + d:start - lag + d + win]
            if ref.size == win and np.dot(ref, ref) > 0:
                c = np.dot(seg_b, ref) / np.sqrt(np.dot(seg_b, seg_b) * np.dot(ref, ref))
                best = max(best, float(c))
        corrs.append(best)
    assert np.median(corrs) > 0.95, corrs


def adaptive_playout_at(device_rate: int, seconds: float, po=None):
    """Playout with the adaptive buffer, fed perfectly regular arrivals (one block per
    block time, 10 ms after it was due), pulled by a device clock of 256-frame periods;
    returns the playout and its stats at 5 s and at the end."""
    from stemlink.udp_client.jitter import JitterConfig

    b, rate = 256, 44100
    po = po or Playout(STEMS, np.array([0.0, 1.0], np.float32), 2, b, rate, device_rate, 2,
                       JitterConfig())
    out = np.zeros((256, 2), np.float32)
    k, at5 = 0, None
    for p in range(int(seconds * device_rate / 256)):
        now = p * 256 / device_rate
        while k * b / rate + 0.010 <= now:
            for s in (0, 1):
                po.offer(*stem_packet(s, k, 0.1), int((k * b / rate + 0.010) * 1e9))
            k += 1
        po.service(now)
        po.fill(out)
        if at5 is None and now >= 5.0:
            at5 = (po.jb.stats.inserted, po.jb.stats.cut_samples, po.jb.stats.concealed)
    js = po.jb.stats
    return po, at5, (js.inserted, js.cut_samples, js.concealed)


@pytest.mark.parametrize("device_rate", [44100, 48000])
def test_adaptive_playout_settles_at_a_regular_arrival_rate(device_rate):
    # once settled (5 s), regular arrivals must not make the adaptive buffer insert or cut:
    # at 48 kHz the output resampler has to hand back every block's share at once (soxr's
    # bursts of four blocks made the measured delay swing by three blocks at each pop, and
    # the buffer inserted and cut all the time: 147 insertions in 20 s through JACK)
    po, at5, end = adaptive_playout_at(device_rate, 15.0)
    assert end == at5, (at5, end)
    assert end[2] == 0 and po.underruns[0] == 0


def test_uplink_at_48khz_restarts_its_resampler_after_a_capture_gap():
    from stemlink.udp_client.live import Uplink
    from stemlink.udp_client.resample import StreamResampler

    up = Uplink(48000, 1, 44100, 2, 256)
    x = (np.sin(np.arange(48000) * 0.01) * 0.5).astype(np.float32)[:, None]
    sent = []
    for pos in range(0, 9600, 480):  # 0.2 s, then 0.1 s of frames lost
        sent += up.feed(pos, x[pos:pos + 480])
    n_before = len(sent)
    for pos in range(14400, 24000, 480):
        sent += up.feed(pos, x[pos:pos + 480])
    ts = [t for t, _ in sent]
    assert ts[:n_before] == [256 * k for k in range(n_before)]
    # the lost device frames (and what was pending) become whole blocks of timestamps
    gap = ts[n_before] - ts[n_before - 1] - 256
    assert gap % 256 == 0 and 0 < gap <= 4800 * 44100 / 48000 + 2 * 256
    assert up.gaps == 1
    # after the gap the resampler starts afresh on the frames captured at 14,400
    fresh = StreamResampler(48000, 44100, 2).process(
        np.repeat(x[14400:24000].T, 2, axis=0)).copy()
    got = np.concatenate([b for _, b in sent[n_before:]], axis=1)
    np.testing.assert_array_equal(got, fresh[:, :got.shape[1]])


def test_live_with_redundancy_through_a_lossy_link_repairs_stem_blocks(model_dir, example):
    """`live --redundancy` through the relay at 3 % loss each way: the session grants it,
    the uplink's parity (two datagrams a block) passes the server's input bound, and the
    client repairs lost stem blocks from the pairs' parity."""
    import asyncio

    import soxr

    from stemlink.bench.relay import Relay, make_config
    from stemlink.udp_client.live import run_live
    from stemlink.udp_server.server import ServeOptions, ServerThread

    x, sr = example
    mono48 = soxr.resample(x[:, :4 * sr].mean(axis=0), sr, 48000).astype(np.float32)
    fake = FakeDevices(mono48, 48000)
    with ServerThread(ServeOptions(str(model_dir), "127.0.0.1", 0)) as st:
        with Relay(st.address, make_config(seed=3, loss=0.03, burst=1.0)) as relay:
            stats = asyncio.run(run_live(relay.address, None, None, "vocals=1,accompaniment=1",
                                         "monitor", b"", 80.0, 256, seconds=4.5,
                                         devices=fake, redundancy=True))
            lost_up, lost_down = relay.stats["up"].lost, relay.stats["down"].lost
    assert lost_up > 0 and lost_down > 0
    assert stats["repaired"] > 0  # stem blocks rebuilt from parity, not concealed
    assert stats["capture_overruns"] == 0
    assert stats["jitter"]["pushed"] > stats["blocks_sent"]  # most stem blocks played


def test_live_bench_finds_the_servers_session_end_lines():
    """bench live reads each session's account from the server's log: the JSON line the
    server really writes (it once looked for a human-readable line the server no longer
    prints, and found nothing)."""
    from types import SimpleNamespace

    from stemlink.bench.live_bench import AudioPathChild
    from stemlink.udp_server.core import session_log_line

    s = SimpleNamespace(id=0xABC, addr=("127.0.0.1", 40000))
    child = AudioPathChild.__new__(AudioPathChild)  # its log only: no process
    child.log = ["stemlink serving ...\n",
                 "2026-11-26 stemlink.server " + session_log_line("session_start", s) + "\n",
                 "2026-11-26 stemlink.server " + session_log_line("session_end", s,
                                                                    reason="bye") + "\n"]
    (line,) = child.session_ends()
    assert '"reason":"bye"' in line and '"session":"00000abc"' in line
