"""The streaming separator: exact delay, block-size independence, fidelity against the
offline reference on real audio with the real model, and an allocation-free hot path."""

import dataclasses
from pathlib import Path

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


def asym(m=None, k=1, h=1, look=0, feed="masked"):
    return StreamConfig(h, look, "asymmetric", synthesis_hop=m, mask_hold=k, model_input=feed)


CONFIGS = [
    (StreamConfig(1, 0), 4095), (StreamConfig(2, 0), 5119), (StreamConfig(4, 0), 7167),
    (StreamConfig(4, 4), 11263), (StreamConfig(4, 8), 15359),
    (asym(), 2047), (asym(h=2), 3071), (asym(k=2), 2047), (asym(feed="hann"), 2047),
    # synthesis hop m: D = 2m - 1 (+ L hops of look-ahead), whatever the mask hold k
    (asym(512), 1023), (asym(512, 2), 1023), (asym(512, 8), 1023),
    (asym(256), 511), (asym(256, 4), 511), (asym(256, 3, look=2), 511 + 2 * 1024),
    (asym(128), 255), (asym(128, 8), 255), (asym(128, 16), 255),
]


def _period(cfg, card):
    return cfg.hop_frames * cfg.mask_hold * cfg.hop(card.hop)


@pytest.mark.parametrize("cfg,expected", CONFIGS)
def test_delay_is_exact_with_unit_masks(card, cfg, expected):
    """D = support + (H-1)*hop + L*hop - 1, support = n_fft (standard) or 2m (asymmetric);
    the mask hold adds nothing. The stems reproduce the input exactly D samples later
    (until the first inference, k*m samples in, the held mask is zero: skipped here)."""
    c = full_band(card)
    sep = StreamingSeparator(c, UnitMaskBackend(c), cfg)
    assert sep.delay == expected
    m = cfg.hop(c.hop)
    support = c.n_fft if cfg.synthesis == "standard" else 2 * m
    assert sep.delay == support + (cfg.lookahead + cfg.hop_frames - 1) * c.hop - 1
    assert sep.latency.period == _period(cfg, c)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 30_000)).astype(np.float32) * 0.3
    y = np.concatenate([sep.process(x[:, i:i + 777]).copy() for i in range(0, 30_000, 777)],
                       axis=2)
    d, start = sep.delay, sep.latency.period
    assert y.shape == (2, 2, 30_000)
    np.testing.assert_allclose(y[:, :, :d], 0.0, atol=1e-7)  # before the first input sample
    for s in range(2):
        np.testing.assert_allclose(y[s, :, d + start:], x[:, start:30_000 - d], atol=2e-5)


@pytest.mark.parametrize("cfg,expected", CONFIGS)
def test_impulse_comes_out_d_samples_later(card, cfg, expected):
    c = full_band(card)
    sep = StreamingSeparator(c, UnitMaskBackend(c), cfg)
    x = np.zeros((2, 24_000), np.float32)
    x[:, 5_000] = 1.0
    y = sep.process(x)[0, 0]
    assert int(np.argmax(np.abs(y))) == 5_000 + expected
    assert y[5_000 + expected] == pytest.approx(1.0, abs=1e-5)


def test_model_sees_the_masked_spectrum_on_the_model_grid(card):
    """With asymmetric synthesis at hop m the model's W frames are the asymmetric-window
    spectra (the ones that get masked) scaled to the Hann window's sum, spaced by the
    model's hop, the newest ending at the current m boundary."""
    from stemlink.engine import dsp

    m = 256
    backend = UnitMaskBackend(card)
    sep = StreamingSeparator(card, backend, asym(m))
    x = np.random.default_rng(4).standard_normal((2, 40 * 1024 + 3 * m)).astype(np.float32)
    sep.process(x)
    pair = dsp.window_pair("asymmetric", card.n_fft, m)
    scale = dsp.hann(card.n_fft).sum() / pair.analysis.astype(np.float64).sum()
    end = x.shape[1]  # a multiple of m: the newest frame ends here
    for i in range(4):
        seg = x[:, end - i * card.hop - card.n_fft:end - i * card.hop].astype(np.float64)
        want = np.abs(np.fft.rfft(seg * pair.analysis, axis=-1))[:, :card.bins] * scale
        got = backend.inputs[0, :, card.window_frames - 1 - i, :]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


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


REAL_CADENCES = [asym(512, 2), asym(256), asym(128, 8), asym(128, 3, look=1), asym(h=2)]


@pytest.mark.parametrize("cfg", REAL_CADENCES)
def test_real_model_output_does_not_depend_on_block_sizes(engine, example, cfg):
    """Bit-identical output whatever the block sizes, at every cadence (real model)."""
    x = np.ascontiguousarray(example[0][:, 30_000:30_000 + 20_000])
    ref = engine.separator(cfg).process(x).copy()
    rng = np.random.default_rng(5)
    for _ in range(3):
        sep, out, i = engine.separator(cfg), [], 0
        while i < x.shape[1]:
            n = int(rng.integers(1, 3000))
            out.append(sep.process(x[:, i:i + n]).copy())
            assert out[-1].shape[2] == min(n, x.shape[1] - i)
            i += n
        np.testing.assert_array_equal(np.concatenate(out, axis=2), ref)


@pytest.mark.parametrize("cfg", [preset("ultra"), preset("extreme"), asym(256),
                                 asym(512, 1), asym(128, 1)])
def test_causality_output_before_a_perturbation_is_identical(engine, example, cfg):
    """Black-box causality with the real model: changing the input from sample p on leaves
    every output sample emitted before p bit-identical, and changes the output within
    one synthesis hop (the frame holding p completes at the next m boundary). D is where
    the output *corresponds* to the input (impulse and chirp tests); this is what it may
    depend on."""
    x = np.ascontiguousarray(example[0][:, 60_000:60_000 + 24_000])
    p = 13_001  # not on any hop boundary
    x2 = x.copy()
    x2[:, p:] += np.random.default_rng(6).standard_normal((2, x.shape[1] - p)).astype(
        np.float32) * 0.1
    ya = engine.separator(cfg).process(x).copy()
    yb = engine.separator(cfg).process(x2).copy()
    m = cfg.hop(1024)
    np.testing.assert_array_equal(ya[:, :, :p], yb[:, :, :p])
    first = int(np.argmax(np.any(ya != yb, axis=(0, 1))))
    assert p <= first < p + m, (first, p)


def test_real_model_chirp_alignment(card, engine):
    """Spleeter's masks sum to 1, so the stems' sum is the input band-limited to the
    model's bins: the cross-correlation with the input peaks at exactly D."""
    sr = card.sample_rate
    t = np.arange(int(1.5 * sr)) / sr
    chirp = np.sin(2 * np.pi * (50 * t + (4000 - 50) / (2 * 1.5) * t**2)).astype(np.float32)
    x = np.zeros((2, 3 * sr), np.float32)
    x[0, 20_000:20_000 + chirp.size] = 0.5 * chirp
    x[1, 20_000:20_000 + chirp.size] = 0.3 * chirp
    for cfg in (preset("monitor"), StreamConfig(4, 4), preset("ultra"), preset("extreme"),
                asym(256, 4)):
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


@pytest.mark.parametrize("cfg", [preset("monitor"), preset("ultra"), preset("extreme"),
                                 asym(256, 3, look=1)], ids=["monitor", "ultra", "extreme",
                                                            "m256-k3-L1"])
def test_hot_path_allocates_nothing_in_steady_state(model_dir, cfg):
    """After warm-up, 200 model hops (>= 100 inferences) must not allocate window-sized
    buffers: within any one process() call the traced peak may rise by less than one
    model hop of one channel (4 KiB), and nothing may be kept from call to call.

    Measured in a fresh interpreter (tests/alloc_probe.py): tracemalloc counts every
    thread, and a thread left by an earlier test would add its bytes to the figure. The
    peak is taken per call, from the memory traced when that call starts."""
    import json
    import subprocess
    import sys

    fields = json.dumps(dataclasses.asdict(cfg))
    done = subprocess.run([sys.executable, "-m", "tests.alloc_probe", str(model_dir), fields],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["threads"] == 1, got
    assert got["inferences"] >= 100, got
    assert got["worst"] < 4096, got
    assert got["kept"] < 1024, got["kept_top"]


def test_bad_configs_are_refused(card, engine):
    from stemlink.engine.errors import EngineError

    with pytest.raises(EngineError):
        engine.separator(StreamConfig(0, 0))
    with pytest.raises(EngineError):
        engine.separator(StreamConfig(40, 30))
    with pytest.raises(EngineError):
        engine.separator(preset("monitor")).process(np.zeros((3, 10), np.float32))
    for bad in (asym(300), asym(64), asym(2048), asym(768),  # not a divisor >= 128
                StreamConfig(1, 0, "standard", synthesis_hop=512),  # needs asymmetric
                asym(512, h=2), asym(1024, k=2, h=2), asym(256, 0), asym(256, 65)):
        with pytest.raises(EngineError):
            engine.separator(bad)


# SDR vs offline on the example (vocals, accompaniment), measured by
# `stemlink bench fidelity --grid` (docs/BENCHMARKS.md, docs/bench/fidelity-grid.json);
# floors sit 0.3 dB below.
MEASURED = {  # (H, m, k, model input) -> dB
    (1, 1024, 1, "hann"): (11.84, 17.72),
    (1, 1024, 1, "masked"): (13.03, 18.92),
    (2, 1024, 1, "masked"): (14.05, 19.93),
    (1, 512, 1, "masked"): (12.01, 17.89),
    (1, 512, 2, "masked"): (11.06, 16.95),
    (1, 512, 4, "masked"): (9.51, 15.40),
    (1, 128, 8, "masked"): (8.68, 14.57),
    (1, 512, 3, "masked"): (10.21, 16.10),  # the CPU presets (GRID_EXTRA rows)
    (1, 128, 12, "masked"): (8.01, 13.90),
}
FLOOR_MARGIN_DB = 0.3


@pytest.mark.parametrize("cfg", [preset("ultra"), preset("extreme"), asym(), asym(h=2)],
                         ids=["ultra", "extreme", "asym-H1", "asym-H2"])
def test_low_delay_fidelity_floor_against_offline(engine, example, offline_ref, cfg):
    """Within 0.3 dB of the measured value: the model fed the masked spectrum, at the
    presets' synthesis hop and mask hold (and the v1 ultra cadences, H = 1 and 2)."""
    x, _ = example
    key = (cfg.hop_frames, cfg.hop(1024), cfg.mask_hold, cfg.model_input)
    want = MEASURED[key]
    y = stream_array(engine.separator(cfg), x)
    got = [sdr(offline_ref[s], y[s]) for s in range(2)]
    assert got[0] >= want[0] - FLOOR_MARGIN_DB and got[1] >= want[1] - FLOOR_MARGIN_DB, got


def test_presets_order_by_delay(card):
    """extreme (m = 128: D = 255 samples, 5.8 ms) < ultra (m = 512: 1023, 23.2 ms) <
    monitor < balanced < quality, on CPU and GPU alike; only the mask hold differs."""
    from stemlink.engine.presets import PRESETS

    for accelerated in (False, True):
        delays = {}
        for name in PRESETS:
            sep = StreamingSeparator(full_band(card), UnitMaskBackend(card),
                                     preset(name, accelerated))
            delays[name] = sep.delay
        assert sorted(delays, key=delays.get) == ["extreme", "ultra", "monitor", "balanced",
                                                  "quality"]
        assert delays["extreme"] == 255 and delays["ultra"] == 1023
    assert preset("ultra", True).mask_hold == 1 and preset("extreme", True).mask_hold == 1


@pytest.mark.parametrize("cfg", [StreamConfig(2, 0), StreamConfig(4, 4),
                                 StreamConfig(1, 0, "asymmetric"), asym(512, 2), asym(256),
                                 asym(128, 8), asym(128, 5, look=1)])
def test_advance_equals_feeding_silence(engine, example, cfg):
    """A long gap costs O(1): advance(n) leaves the separator exactly where n samples of
    silence would, so every later output sample is the same (real model, real audio),
    including frames masked by the mask held over the gap (the model's answer to silence,
    computed once on the first advance and not counted as a stream inference)."""
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


@pytest.mark.parametrize("cfg", [StreamConfig(2, 0), asym(512, 2), asym(128, 8), asym(256)])
def test_skip_keeps_context_and_costs_no_inference(engine, example, cfg):
    """skip() feeds the STFT without the model; output after a skipped stretch matches the
    uninterrupted stream once the next inference has run and the frames masked before it
    have left the overlap-add."""
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
    settle = n1 + a.latency.period + a.delay + 4096  # held-mask frames have left
    ya, yb = [], []
    for i in range(n1, x.shape[1] - 256, 256):
        oa, ob = a.process(x[:, i:i + 256]), b.process(x[:, i:i + 256])
        if i >= settle:
            ya.append(oa.copy())
            yb.append(ob.copy())
    assert np.abs(np.concatenate(ya, -1) - np.concatenate(yb, -1)).max() < 1e-5
