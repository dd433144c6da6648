import numpy as np
import pytest

from stemlink.engine import dsp

N, M = 4096, 1024


@pytest.mark.parametrize("mode", ["standard", "asymmetric"])
def test_window_product_overlap_adds_to_one(mode):
    pair = dsp.window_pair(mode, N, M)
    prod = pair.analysis.astype(np.float64) * pair.synthesis
    total = np.zeros(M)
    for k in range(0, N, M):
        total += prod[k:k + M]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_asymmetric_synthesis_lives_on_last_two_hops():
    pair = dsp.window_pair("asymmetric", N, M)
    assert pair.support == 2 * M
    assert np.all(pair.synthesis[: N - 2 * M] == 0)
    assert np.all(pair.synthesis[N - 2 * M + 1:] > 0)
    # analysis rises over N - M samples, falls over the last M
    assert np.argmax(pair.analysis) == N - M
    assert np.all(np.diff(pair.analysis[: N - M]) >= 0)
    assert np.all(np.diff(pair.analysis[N - M:]) <= 0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        dsp.window_pair("fancy", N, M)


def test_offline_stft_overlap_add_reconstructs_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 10_000)).astype(np.float32)
    pair = dsp.window_pair("standard", N, M)
    spec = dsp.stft(x, N, M, pair.analysis)
    assert spec.shape == (2, dsp.n_frames(10_000, N, M), N // 2 + 1)
    frames = np.fft.irfft(spec, n=N, axis=-1).astype(np.float32)
    out = np.zeros_like(x)
    dsp.overlap_add(frames, M, pair.synthesis, 0, out)
    np.testing.assert_allclose(out, x, atol=2e-5)


def test_piecewise_stft_equals_the_whole():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 30_000)).astype(np.float32)
    w = dsp.hann(N).astype(np.float32)
    whole = dsp.stft(x, N, M, w)
    pieces = np.concatenate([dsp.stft(x, N, M, w, f, 5) for f in range(0, whole.shape[1], 5)],
                            axis=1)
    np.testing.assert_array_equal(pieces, whole)
    assert dsp.stft(x, N, M, w, whole.shape[1], 5).shape[1] == 0
