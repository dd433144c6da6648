"""Concealment, to the sample: continuity at every join, decay to silence over long gaps,
exact pass-through of real audio, and no allocation after set-up."""

import tracemalloc

import numpy as np
import pytest

from stemlink.conceal import FADE_END_S, METHODS, Concealer

SR = 44100


def music_like(n: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Harmonic tones plus a little noise: something every method should hold on to."""
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = (0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 330.5 * t + 1)
         + 0.1 * np.sin(2 * np.pi * 1234 * t) + 1e-3 * rng.standard_normal(n))
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def run(c: Concealer, x: np.ndarray, lost: set[int]) -> np.ndarray:
    b = c.block
    out = np.zeros_like(x)
    for k in range(x.shape[1] // b):
        if k in lost:
            c.missing(out[:, k * b:(k + 1) * b])
        else:
            c.good(x[:, k * b:(k + 1) * b], out[:, k * b:(k + 1) * b])
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block", [64, 128, 256])
def test_no_step_anywhere_across_gaps_of_any_length(method, block):
    x = music_like(120 * 256)
    lost = {20} | {40, 41} | set(range(60, 60 + 4096 // block))  # 1, 2 and many blocks
    out = run(Concealer(2, block, method), x, lost)
    # to the sample: no step at an entry, an exit or a loop point is larger than the
    # signal's own largest sample-to-sample step
    assert np.abs(np.diff(out, axis=1)).max() <= 1.0 * np.abs(np.diff(x, axis=1)).max() + 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_real_blocks_pass_through_exactly_and_rejoin_after_the_crossfade(method):
    b = 256
    x = music_like(30 * b)
    c = Concealer(2, b, method)
    out = run(c, x, {10, 11})
    np.testing.assert_array_equal(out[:, :10 * b], x[:, :10 * b])  # before: untouched
    f = c.xfade
    np.testing.assert_array_equal(out[:, 12 * b + f:], x[:, 12 * b + f:])  # after the fade
    assert c.concealed_blocks == 2
    # inside the fade it moves from the concealment towards the real signal
    assert np.abs(out[:, 12 * b + f - 1] - x[:, 12 * b + f - 1]).max() < \
        0.1 * np.abs(x).max() + np.abs(out[:, 12 * b] - x[:, 12 * b]).max() / 2


@pytest.mark.parametrize("method", METHODS)
def test_energy_decays_to_silence_over_a_long_gap(method):
    b = 128
    x = music_like(200 * b)
    c = Concealer(2, b, method)
    out = run(c, x, set(range(50, 200)))
    g0 = 50 * b
    end = round(FADE_END_S * SR)
    win = round(0.010 * SR)
    e = [float(np.sum(out[:, g0 + i * win:g0 + (i + 1) * win] ** 2)) for i in range(6)]
    assert e[5] < 0.1 * max(e[0], 1e-12) or e[0] == 0.0
    assert np.all(out[:, g0 + end:] == 0.0)  # silent from 60 ms on, exactly
    assert c.concealing


def test_pitch_repeats_a_periodic_signal_almost_exactly():
    period, b = 200, 256
    one = np.random.default_rng(1).standard_normal(period).astype(np.float32)
    one -= one.mean()
    x = np.tile(one, 40)[None, :]
    x = np.concatenate([x, x])
    c = Concealer(2, b, "pitch")
    out = run(c, x, {20})
    seg = slice(20 * b, 21 * b)
    err = np.sum((out[:, seg] - x[:, seg]) ** 2) / np.sum(x[:, seg] ** 2)
    assert err < 1e-4  # > 40 dB: the found period is exact and the loop point seamless


def test_lpc_forecast_matches_the_true_model_of_an_ar_process():
    b, n = 256, 40 * 256
    rng = np.random.default_rng(2)
    e = rng.standard_normal(n)
    x = np.zeros(n)
    for i in range(2, n):  # a resonance: poles at radius 0.95
        x[i] = 1.6 * x[i - 1] - 0.9025 * x[i - 2] + e[i]
    x = (x / np.abs(x).max()).astype(np.float32)[None, :]
    out = run(Concealer(1, b, "lpc"), x, {30})
    # the noise-free forecast of the true model from the same past
    g0 = 30 * b
    ref = list(x[0, g0 - 2:g0].astype(np.float64))
    for _ in range(64):
        ref.append(1.6 * ref[-1] - 0.9025 * ref[-2])
    ref = np.array(ref[2:])
    err = np.sum((out[0, g0:g0 + 64] - ref) ** 2) / np.sum(ref ** 2)
    assert err < 0.05  # the fit sees 1024 noisy samples: a few % is estimation error


def test_silence_stays_silent():
    for m in METHODS:
        c = Concealer(2, 64, m)
        out = run(c, np.zeros((2, 64 * 20), np.float32), {5, 6, 12})
        assert np.all(out == 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_good_and_missing_allocate_nothing_after_setup(method):
    b = 1024  # one block is 8 KiB: far above the few small view objects Python makes
    c = Concealer(2, b, method)
    out = np.zeros((2, b), np.float32)
    x = music_like(64 * b)
    lost = {3, 4, 9, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 40}
    for k in range(12):  # warm-up: every code path once
        (c.missing(out) if k in lost else c.good(x[:, k * b:(k + 1) * b], out))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for k in range(12, 64):
            (c.missing(out) if k in lost else c.good(x[:, k * b:(k + 1) * b], out))
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # no array allocated per call: a block (8 KiB), even a channel of one, would show
    assert cur - base <= 1024 and peak - base < 4096, (cur - base, peak - base)


def test_bad_method_is_refused():
    with pytest.raises(ValueError):
        Concealer(2, 256, "magic")


def run_two_sided(c: Concealer, x: np.ndarray, lost: set[int]) -> np.ndarray:
    b = c.block
    out = np.zeros_like(x)
    n = x.shape[1] // b
    for k in range(n):
        sl = slice(k * b, (k + 1) * b)
        if k in lost:
            nxt = k + 1 < n and k + 1 not in lost
            c.missing(out[:, sl], after=x[:, (k + 1) * b:(k + 2) * b] if nxt else None)
        else:
            c.good(x[:, sl], out[:, sl])
    return out


@pytest.mark.parametrize("block", [64, 256])
def test_match_interpolates_into_the_following_block(block):
    x = music_like(160 * 256, seed=3)
    lost = {40, 41} | {60} | set(range(80, 80 + 4096 // block))
    lost = {k * 256 // block for k in (40, 41, 60)} | lost
    two = run_two_sided(Concealer(2, block, "match"), x, lost)
    one = run(Concealer(2, block, "match"), x, lost)
    assert np.abs(np.diff(two, axis=1)).max() <= np.abs(np.diff(x, axis=1)).max() + 1e-6
    for k in sorted(lost):  # blocks after a gap are the real ones, exactly, no fade needed
        if k + 1 not in lost:
            sl = slice((k + 1) * block, (k + 2) * block)
            np.testing.assert_array_equal(two[:, sl], x[:, sl])
    g = slice(60 * 256 // block * block, (60 * 256 // block + 1) * block)

    def err(y):
        return float(np.sum((y[:, g] - x[:, g]) ** 2) / np.sum(x[:, g] ** 2))
    assert err(two) < 0.05  # > 13 dB
    if block == 256:  # (a 64-sample block gives the backward match a short window)
        assert err(two) <= err(one)


def test_match_with_after_on_silence_is_silent():
    c = Concealer(2, 128, "match")
    z = np.zeros((2, 128), np.float32)
    out = np.ones((2, 128), np.float32)
    for _ in range(40):
        c.good(z, out)
    c.missing(out, after=z)
    assert np.all(out == 0.0)
