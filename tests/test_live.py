"""The live client's pieces that need no sound card: monitor mix, playout, resampling."""

import numpy as np
import pytest

from stemlink.udp_client.core import ClientError
from stemlink.udp_client.live import Playout
from stemlink.udp_client.mix import parse_mix

STEMS = ["vocals", "accompaniment"]


def test_parse_mix():
    np.testing.assert_array_equal(parse_mix("accompaniment", STEMS), [0, 1])
    np.testing.assert_allclose(parse_mix("vocals=0.2,accompaniment=1", STEMS), [0.2, 1])
    for bad in ("drums", "vocals=loud", "vocals=100"):
        with pytest.raises(ClientError):
            parse_mix(bad, STEMS)


def test_playout_mixes_stems_with_gains_at_the_model_rate():
    po = Playout(STEMS, np.array([0.5, 1.0], np.float32), 2, 256, 44100, 44100, 2, target=1)
    for k in range(4):
        po.push(0, k * 256, np.full((2, 256), 1.0, np.float32))
        po.push(1, k * 256, np.full((2, 256), 2.0, np.float32))
    out = np.zeros((300, 2), np.float32)
    po.fill(out)  # first 256 samples: the jitter buffer's stated prefill (1 block)
    np.testing.assert_array_equal(out[:256], 0.0)
    np.testing.assert_array_equal(out[256:], 2.5)
    po.fill(out)
    np.testing.assert_array_equal(out, 2.5)


def test_playout_resamples_to_the_device_rate_and_folds_to_mono():
    po = Playout(STEMS, np.array([1.0, 0.0], np.float32), 2, 256, 44100, 48000, 1, target=1)
    t = np.arange(256 * 40) / 44100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    for k in range(40):
        po.push(0, k * 256, np.stack([tone[k * 256:(k + 1) * 256]] * 2))
    outs = []
    for _ in range(30):
        out = np.zeros((320, 1), np.float32)
        po.fill(out)
        outs.append(out[:, 0].copy())
    y = np.concatenate(outs)[2000:8000]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak_hz = np.argmax(spectrum) * 48000 / y.size
    assert abs(peak_hz - 440) < 10 and 0.5 < np.max(np.abs(y)) < 1.1
