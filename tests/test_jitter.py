"""Playout buffer: one clock for all stems, exact placement, the capacity bound, late and
too-early blocks, and the adaptive target growing at once and shrinking without a click."""

import numpy as np
import pytest

from stemlink.udp_client.jitter import JitterBuffer, JitterConfig

SR = 44100


def blk(v, b=64, c=2):
    return np.full((c, b), v, np.float32)


def test_fixed_plays_in_order_after_the_stated_delay_with_reordering():
    b = 64
    jb = JitterBuffer(1, 2, b, SR, JitterConfig(fixed_ms=1000 * 2 * b / SR), capacity=8)
    base = 1 << 33  # media timestamps are u64: far past any u32 wrap
    for k in (0, 2, 1, 3):  # reordered arrival
        assert jb.push(0, base + k * b, blk(k + 1), now=0.0)
    out = np.zeros((1, 2, 3 * b // 2), np.float32)
    jb.pop(out, 0.0)
    np.testing.assert_array_equal(out[0, 0], 0.0)  # 2 blocks of silence before the first
    jb.pop(out, 0.0)
    np.testing.assert_array_equal(out[0, 0, :b // 2], 0.0)
    np.testing.assert_array_equal(out[0, 0, b // 2:], 1.0)
    jb.pop(out, 0.0)
    np.testing.assert_array_equal(out[0, 0, :b], 2.0)
    np.testing.assert_array_equal(out[0, 0, b:], 3.0)
    assert jb.stats.concealed == 0 and jb.stats.prefill == 2 * b


def test_one_clock_for_all_stems_when_a_stems_first_block_is_lost():
    b = 256
    jb = JitterBuffer(2, 1, b, SR, JitterConfig(fixed_ms=1000 * b / SR), capacity=8)
    jb.push(1, 0, blk(10, b, 1), 0.0)  # stem 0's first block never comes
    for k in (1, 2):
        jb.push(0, k * b, blk(k, b, 1), 0.001)
        jb.push(1, k * b, blk(10 + k, b, 1), 0.001)
    out = np.zeros((2, 1, 4 * b), np.float32)
    jb.pop(out, 0.002)
    # both stems play media block k at the same output position b + k*b
    np.testing.assert_array_equal(out[1, 0, b:2 * b], 10.0)
    np.testing.assert_array_equal(out[1, 0, 2 * b:3 * b], 11.0)
    xf = 66  # stem 0 fades in from its concealment of block 0 (it had nothing to match)
    np.testing.assert_array_equal(out[0, 0, 2 * b + xf:3 * b], 1.0)
    np.testing.assert_array_equal(out[0, 0, 3 * b:], 2.0)
    np.testing.assert_array_equal(out[1, 0, 3 * b:], 12.0)
    assert jb.stats.concealed == 1  # stem 0, block 0


def test_capacity_bound_is_exact():
    b, cap = 64, 8
    jb = JitterBuffer(1, 2, b, SR, JitterConfig(fixed_ms=1000 * b / SR), capacity=cap)
    jb.push(0, 0, blk(1.0), 0.0)  # playout starts at -b
    out = np.zeros((1, 2, b), np.float32)
    jb.pop(out, 0.0)  # the prefill block; the next to play is ts 0
    assert jb.push(0, (cap - 1) * b, blk(7.0), 0.0)  # the last free slot
    assert not jb.push(0, cap * b, blk(8.0), 0.0)  # would land on the block being played
    assert jb.stats.too_early == 1
    jb.pop(out, 0.0)
    np.testing.assert_array_equal(out[0, 0], 1.0)  # not erased by the too-early block


def test_late_and_duplicate_blocks_are_dropped_and_counted():
    b = 64
    jb = JitterBuffer(1, 2, b, SR, JitterConfig(fixed_ms=1000 * b / SR), capacity=8)
    jb.push(0, 0, blk(1.0), 0.0)
    out = np.zeros((1, 2, 3 * b), np.float32)
    jb.pop(out, 0.0)  # prefill, block 0, block 1 (missing: concealed)
    assert jb.stats.concealed == 1
    assert not jb.push(0, b, blk(2.0), 0.01) and jb.stats.late == 1
    assert jb.push(0, 3 * b, blk(4.0), 0.01) and not jb.push(0, 3 * b, blk(4.0), 0.01)
    assert jb.stats.duplicates == 1


def simulate(jb, delays, n_blocks, b, period, tone=440.0, stems=1):
    """Blocks of a sine sent every b/SR s, arriving after delays[k] (s; inf = lost);
    popped every `period` samples. Returns the output and a trace of (now, E, T)."""
    t = np.arange(n_blocks * b) / SR
    x = np.sin(2 * np.pi * tone * t).astype(np.float32)
    events = [((k + 1) * b / SR + delays[k], k) for k in range(n_blocks) if np.isfinite(delays[k])]
    events.sort()
    pops = int((n_blocks * b / SR + 0.5) * SR / period)
    out = np.zeros((stems, 1, pops * period), np.float32)
    buf = np.zeros((stems, 1, period), np.float32)
    trace, i = [], 0
    for p in range(pops):
        now = (p + 1) * period / SR
        while i < len(events) and events[i][0] <= now:
            at, k = events[i]
            for s in range(stems):
                jb.push(s, k * b, x[None, k * b:(k + 1) * b], at)
            i += 1
        jb.pop(buf, now)
        out[:, :, p * period:(p + 1) * period] = buf
        trace.append((now, jb.delay_ms(now), jb.target_ms))
        if jb.play is not None and jb.play >= n_blocks * b:  # the stream has been played
            return out[:, :, :(p + 1) * period], np.array(trace)
    return out, np.array(trace)


def test_adaptive_settles_low_on_a_clean_link_and_reports_its_delay():
    b = 128
    jb = JitterBuffer(1, 1, b, SR)
    delays = np.full(2000, 0.002) + 0.0003 * np.random.default_rng(0).random(2000)
    out, tr = simulate(jb, delays, 2000, b, b)
    assert jb.stats.late == 0 and jb.stats.concealed == 0
    assert tr[-1, 2] < 6.0  # target: 0.3 ms spread + 2 ms headroom + a 2.9 ms pop, binned
    assert tr[-1, 1] < tr[-1, 2] + 1000 * 2 * b / SR  # shrank from its 20 ms start
    assert jb.stats.cut_samples > 0 and np.isfinite(jb.stats.mean_delay_ms)
    # shrinking never clicks: no step larger than the tone's own largest step
    assert np.abs(np.diff(out[0, 0, SR // 2:])).max() <= 2 * np.pi * 440 / SR * 1.05


def test_adaptive_grows_at_once_after_an_underrun_then_shrinks_slowly():
    b = 128
    n = 8000  # 23 s: the spike must leave the histogram's memory (~2000 arrivals)
    jb = JitterBuffer(1, 1, b, SR, JitterConfig(initial_ms=5.0))
    delays = np.full(n, 0.001)
    delays[1000:1010] = 0.040  # a 40 ms delay spike (e.g. a Wi-Fi retry burst)
    out, tr = simulate(jb, delays, n, b, b)
    t_spike = 1000 * b / SR + 0.041
    after = tr[(tr[:, 0] > t_spike) & (tr[:, 0] < t_spike + 0.2)]
    assert after[:, 2].max() >= 38.0  # the target jumped to cover the late blocks at once
    assert jb.stats.late > 0 and jb.stats.inserted > 0
    # the delay followed within 200 ms; later (clean) it came back down, slowly
    assert after[-1, 1] >= 30.0
    assert tr[-1, 1] < 25.0
    assert np.abs(np.diff(out[0, 0])).max() <= 2 * np.pi * 440 / SR * 1.05


@pytest.mark.parametrize("fixed", [True, False])
def test_lost_blocks_are_concealed_not_waited_for(fixed):
    b = 128
    cfg = JitterConfig(fixed_ms=10.0) if fixed else JitterConfig()
    jb = JitterBuffer(2, 1, b, SR, cfg)
    delays = np.full(600, 0.001)
    delays[100::50] = np.inf
    out, _ = simulate(jb, delays, 600, b, 256, stems=2)
    assert jb.stats.concealed == 2 * 10 and jb.stats.inserted == 0 and jb.stats.late == 0
