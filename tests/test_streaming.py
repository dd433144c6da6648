"""The streaming separator: exact delay, block-size independence, fidelity against the
offline reference on real audio with the real model, and an allocation-free hot path."""

import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemlink.engine.presets import StreamConfig, preset
from stemlink.engine.streaming import StreamingSeparator
from stemlink.separate import stream_array
from tests.conftest import lowpass, sdr


class UnitMaskBackend:
    """Inference stand-in for exact DSP checks: every mask is 1 (perfect reconstruction).
    The model's own behaviour is tested with the real ONNX graph below."""

    name = "unit-mask"
    batch = 1

    def __init__(self, card, stems_value=1.0):
        self.inputs = np.zeros((1, card.channels, card.window_frames, card.bins), np.float32)
        self.outputs = np.full((1, len(card.stems), card.channels, card.window_frames,
                                card.bins), stems_value, np.float32)

    def activate(self):
        pass

    def infer(self):
        return self.outputs

    def deactivate(self):
        pass


def full_band(card):
    # "average" extends the (unit) mask above the model's bins: the whole band passes
    return dataclasses.replace(card, mask_extension="average")


CONFIGS = [
    (StreamConfig(1, 0), 4095), (StreamConfig(2, 0), 5119), (StreamConfig(4, 0), 7167),
    (StreamConfig(4, 4), 11263), (StreamConfig(4, 8), 15359),
    (StreamConfig(1, 0, "asymmetric"), 2047), (StreamConfig(2, 0, "asymmetric"), 3071),
]


@pytest.mark.parametrize("cfg,expected", CONFIGS)
def test_delay_is_exact_with_unit_masks(card, cfg, expected):
    c = full_band(card)
    sep = StreamingSeparator(c, UnitMaskBackend(c), cfg)
    assert sep.delay == expected
    assert sep.delay == sep.latency.support + (cfg.lookahead + cfg.hop_frames - 1) * c.hop - 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 30_000)).astype(np.float32) * 0.3
    y = np.concatenate([sep.process(x[:, i:i + 777]).copy() for i in range(0, 30_000, 777)],
                       axis=2)
    d = sep.delay
    assert y.shape == (2, 2, 30_000)
    np.testing.assert_allclose(y[:, :, :d], 0.0, atol=1e-7)  # before the first input sample
    for s in range(2):
        np.testing.assert_allclose(y[s, :, d:], x[:, :30_000 - d], atol=2e-5)


@pytest.mark.parametrize("cfg,expected", CONFIGS)
def test_impulse_comes_out_d_samples_later(card, cfg, expected):
    c = full_band(card)
    sep = StreamingSeparator(c, UnitMaskBackend(c), cfg)
    x = np.zeros((2, 24_000), np.float32)
    x[:, 5_000] = 1.0
    y = sep.process(x)[0, 0]
    assert int(np.argmax(np.abs(y))) == 5_000 + expected
    assert y[5_000 + expected] == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=25))
def test_output_does_not_depend_on_block_sizes(card_and_signal, sizes):
    card, x, reference = card_and_signal
    c = full_band(card)
    sep = StreamingSeparator(c, UnitMaskBackend(c), StreamConfig(2, 1))
    out, i = [], 0
    while i < x.shape[1]:
        for n in sizes:
            blk = x[:, i:i + n]
            if blk.shape[1] == 0:
                break
            out.append(sep.process(blk).copy())
            assert out[-1].shape[2] == blk.shape[1]  # never lost output length
            i += blk.shape[1]
    np.testing.assert_array_equal(np.concatenate(out, axis=2), reference)


@pytest.fixture(scope="module")
def card_and_signal(card):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 12_000)).astype(np.float32)
    c = full_band(card)
    ref = StreamingSeparator(c, UnitMaskBackend(c), StreamConfig(2, 1)).process(x).copy()
    return card, x, ref


def test_real_model_chirp_alignment(card, engine):
    """Spleeter's masks sum to 1, so the stems' sum is the input band-limited to the
    model's bins: the cross-correlation with the input peaks at exactly D."""
    sr = card.sample_rate
    t = np.arange(int(1.5 * sr)) / sr
    chirp = np.sin(2 * np.pi * (50 * t + (4000 - 50) / (2 * 1.5) * t**2)).astype(np.float32)
    x = np.zeros((2, 3 * sr), np.float32)
    x[0, 20_000:20_000 + chirp.size] = 0.5 * chirp
    x[1, 20_000:20_000 + chirp.size] = 0.3 * chirp
    for cfg in (preset("monitor"), StreamConfig(4, 4), preset("ultra")):
        sep = engine.separator(cfg)
        y = sep.process(x).sum(axis=0)[0]
        xc = np.fft.irfft(np.fft.rfft(y, 2 * y.size) * np.conj(np.fft.rfft(x[0], 2 * y.size)))
        assert int(np.argmax(xc[: y.size])) == sep.delay


FIDELITY = [  # (config, min vocals SDR, min accompaniment SDR)
    (StreamConfig(4, 0), 14.0, 20.0),
    (StreamConfig(4, 8), 19.0, 0.0),
]


@pytest.mark.parametrize("cfg,vocals,accomp", FIDELITY)
def test_fidelity_against_offline(engine, example, offline_ref, cfg, vocals, accomp):
    x, _ = example
    y = stream_array(engine.separator(cfg), x)
    got = [sdr(offline_ref[s], y[s]) for s in range(2)]
    assert got[0] >= vocals and got[1] >= accomp, got


def test_stems_sum_to_mixture_below_11khz(card, engine, example, offline_ref):
    """Tolerance: 40 dB SDR of the stems' sum against the mixture, both low-passed at
    10.5 kHz (the model's bins end at 11.0 kHz; the STFT smears 2-3 bins around it)."""
    x, sr = example
    y = stream_array(engine.separator(preset("monitor")), x)
    for stems in (offline_ref, y):
        total = lowpass(stems.sum(axis=0), sr, 10_500)
        assert sdr(lowpass(x, sr, 10_500), total) >= 40.0


def test_nan_and_inf_become_silence_and_are_counted(engine):
    sep = engine.separator(preset("monitor"))
    x = np.random.default_rng(3).standard_normal((2, 8192)).astype(np.float32) * 0.1
    x[0, 100] = np.nan
    x[1, 5000] = np.inf
    y = sep.process(x)
    assert np.all(np.isfinite(y)) and y.shape == (2, 2, 8192)
    assert sep.stats.nonfinite_blocks == 2


def test_hot_path_allocates_nothing_in_steady_state(engine, example):
    """After warm-up, 200 hops (100 inferences) must not allocate window-sized buffers:
    the traced peak may rise by less than one hop of one channel (4 KiB)."""
    x = np.ascontiguousarray(example[0][:, :300 * 1024])
    sep = engine.separator(preset("monitor"))
    for i in range(0, 40 * 1024, 1024):
        sep.process(x[:, i:i + 1024])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(40 * 1024, 240 * 1024, 1024):
            sep.process(x[:, i:i + 1024])
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sep.stats.inferences >= 120
    assert peak - base < 4096, (peak - base)
    assert current - base < 1024


def test_bad_configs_are_refused(card, engine):
    from stemlink.engine.errors import EngineError

    with pytest.raises(EngineError):
        engine.separator(StreamConfig(0, 0))
    with pytest.raises(EngineError):
        engine.separator(StreamConfig(40, 30))
    with pytest.raises(EngineError):
        engine.separator(preset("monitor")).process(np.zeros((3, 10), np.float32))


def test_ultra_fidelity_at_h1_against_offline(engine, example, offline_ref):
    """Asymmetric synthesis, H = 1, L = 0 (D = 2047 samples, 46.4 ms)."""
    x, _ = example
    sep = engine.separator(StreamConfig(1, 0, "asymmetric"))
    assert sep.delay == 2 * 1024 - 1
    y = stream_array(sep, x)
    got = [sdr(offline_ref[s], y[s]) for s in range(2)]
    assert got[0] >= 11.5 and got[1] >= 17.0, got


def test_ultra_preset_is_the_lowest_delay(card):
    from stemlink.engine.presets import PRESETS

    for accelerated in (False, True):
        delays = {}
        for name in PRESETS:
            sep = StreamingSeparator(full_band(card), UnitMaskBackend(card),
                                     preset(name, accelerated))
            delays[name] = sep.delay
        assert min(delays, key=delays.get) == "ultra"
        assert delays["ultra"] == (preset("ultra", accelerated).hop_frames + 1) * 1024 - 1


@pytest.mark.parametrize("cfg", [StreamConfig(2, 0), StreamConfig(4, 4),
                                 StreamConfig(1, 0, "asymmetric")])
def test_advance_equals_feeding_silence(engine, example, cfg):
    """A long gap costs O(1): advance(n) leaves the separator exactly where n samples of
    silence would, so every later output sample is the same (real model, real audio)."""
    x = example[0][:, :40_000]
    a, b = engine.separator(cfg), engine.separator(cfg)
    a.process(x[:, :20_480])
    b.process(x[:, :20_480])
    gap = a.memory + 3 * 256 + 100  # not a multiple of the hop: phases must carry over
    inf = a.stats.inferences
    a.advance(gap)
    assert a.stats.inferences == inf  # no model call for the gap
    b.process(np.zeros((2, gap), np.float32))
    ya = np.concatenate([a.process(x[:, i:i + 256]).copy() for i in range(20_480, 40_000, 256)],
                        axis=-1)
    yb = np.concatenate([b.process(x[:, i:i + 256]).copy() for i in range(20_480, 40_000, 256)],
                        axis=-1)
    assert np.abs(ya - yb).max() < 1e-6
    with pytest.raises(Exception, match="advance"):
        a.advance(a.memory - 1)


def test_skip_keeps_context_and_costs_no_inference(engine, example):
    """skip() feeds the STFT without the model; output after a skipped stretch matches the
    uninterrupted stream once the held-mask frames have left the overlap-add."""
    cfg = StreamConfig(2, 0)
    x = example[0][:, 44_100:44_100 + 6 * 44_100]
    a, b = engine.separator(cfg), engine.separator(cfg)
    n0, n1 = 2 * 44_100 // 256 * 256, 3 * 44_100 // 256 * 256
    a.process(x[:, :n0])
    b.process(x[:, :n0])
    inf = a.stats.inferences
    for i in range(n0, n1, 256):
        a.skip(x[:, i:i + 256])
        b.process(x[:, i:i + 256])
    assert a.stats.inferences == inf and a.stats.skipped_inferences > 0
    settle = n1 + a.delay + 4096  # the last held-mask frame has left the output
    ya, yb = [], []
    for i in range(n1, x.shape[1] - 256, 256):
        oa, ob = a.process(x[:, i:i + 256]), b.process(x[:, i:i + 256])
        if i >= settle:
            ya.append(oa.copy())
            yb.append(ob.copy())
    assert np.abs(np.concatenate(ya, -1) - np.concatenate(yb, -1)).max() < 1e-5
