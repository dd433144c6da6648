"""live's input-to-output latency account (udp_client/latency.py), on generated clocks."""

import numpy as np

from stemlink.udp_client.latency import LatencyAccount


def run_cycles(acct: LatencyAccount, cycles: int, period: int, play0: float, held: float,
               moves: dict | None = None) -> None:
    """JACK-like cycles: capture first, then playback. The playout clock advances one
    device period per cycle (model samples at the account's ratio); `moves` {cycle: model
    samples} shifts it the way an adaptive buffer's insertion (+) or cut (-) does."""
    ratio = acct.model_rate / acct.device_rate
    shift = 0.0
    for k in range(cycles):
        acct.on_capture(period)
        shift += (moves or {}).get(k, 0.0)
        acct.on_playout(play0 + k * period * ratio - shift, held)


def test_total_is_d_plus_capture_minus_playout_position_exactly():
    acct = LatencyAccount(44100, 48000, delay=1024, jitter_samples=512)
    run_cycles(acct, 10, 256, play0=-700.0, held=300.0)
    # first cycle: capture_start 0; position = -700 - 300 * 44100/48000
    want = 1024 + 0 - (-700 - 300 * 44100 / 48000)
    assert acct.first_samples == want and acct.last_samples == want
    r = acct.report()
    assert r["stated_total_samples"] == want
    assert r["start_offset_ms"] == 1000 * (want - 1024 - 512) / 44100


def test_the_total_over_time_follows_a_moving_playout_clock():
    # 48 kHz device, 256-frame periods, a point every 0.1 s of capture (4800 frames);
    # at cycle 200 the buffer inserts a block (+256 model samples of delay), at cycle 500
    # it cuts 100 samples
    acct = LatencyAccount(44100, 48000, delay=1024, jitter_samples=512)
    run_cycles(acct, 1000, 256, play0=-2000.0, held=0.0, moves={200: 256, 500: -100})
    frames, totals = acct.series()
    assert acct.every == 4800
    # the first point when playout started, then the first cycle at or past each 4800
    want_frames = [0] + [256 * -(-4800 * j // 256) for j in range(1, 54)]
    np.testing.assert_array_equal(frames, want_frames[:len(frames)])
    assert len(frames) == 54  # 1000 cycles = 256,000 frames: points at 0 .. 53 * 4800
    base = 1000 * (1024 + 2000) / 44100
    step = {f: base + (1000 * 256 / 44100 if f >= 200 * 256 else 0)
            - (1000 * 100 / 44100 if f >= 500 * 256 else 0) for f in frames}
    np.testing.assert_allclose(totals, [step[f] for f in frames], rtol=0, atol=1e-9)
    r = acct.report()
    assert r["over_time"]["capture_frames"] == frames.tolist()
    assert r["stated_total_ms"] == base
    assert abs(r["stated_total_at_end_ms"] - (base + 1000 * 156 / 44100)) < 1e-9


def test_the_series_keeps_the_latest_points_when_full():
    acct = LatencyAccount(44100, 44100, delay=0, jitter_samples=0, every=256, capacity=8)
    run_cycles(acct, 20, 256, play0=0.0, held=0.0)
    frames, _ = acct.series()
    np.testing.assert_array_equal(frames, 256 * np.arange(12, 20))


def test_a_late_callback_records_one_point_not_a_burst():
    # a capture that jumps by several points' worth (one long period) gives one point, and
    # the next point is on the grid after it
    acct = LatencyAccount(44100, 44100, delay=0, jitter_samples=0, every=1000)
    for n in (256, 5000, 256, 256, 256, 256):
        acct.on_capture(n)
        acct.on_playout(0.0, 0.0)
    frames, _ = acct.series()
    np.testing.assert_array_equal(frames, [0, 5256, 6024])  # next on the grid: 6000


def test_bench_live_compares_each_window_with_what_live_stated_then():
    # live's series: 70 ms until capture frame 48,000 (1 s at 48 kHz), 80 ms after; the
    # song starts at capture frame 4,800 (the step is at song time 0.9 s). Windows of 1 s
    # centred at song time 0.3 s (all before the step), 1.0 s (over it), 2.0 s (after it)
    from stemlink.bench.live_bench import stated_at

    frames = list(range(0, 200_000, 4800))
    over = {"capture_frames": frames, "total_ms": [70.0 if f < 48_000 else 80.0
                                                   for f in frames]}
    got = stated_at([0.3, 1.0, 2.0], [71.0, 79.0, 80.0], over, 4800.0, 48000)
    # over the step the measured 79 ms is compared with 80 (a value stated then), never
    # with a blend of the two
    assert got == [70.0, 80.0, 80.0]
    assert stated_at([0.3], [70.0], None, 4800.0, 48000) == [None]
