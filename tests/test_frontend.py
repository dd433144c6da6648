"""The cheaper media hot path must produce the same bytes as the straightforward one, and
`stemlink bench frontend` must run and write its report (speed is not asserted)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemlink.bench.frontend import ceiling
from stemlink.wire import packets as pk
from stemlink.wire.constants import HEADER_SIZE, TAG_SIZE, PacketType, SampleFormat

KEY = bytes(range(32))


def reference_s16(samples: np.ndarray) -> np.ndarray:
    """The s16 conversion as first written: scale, round half to even, saturate."""
    x = np.rint(samples.T.astype(np.float32) * np.float32(32768.0))
    return np.clip(x, -32768.0, 32767.0).astype("<i2")


def _write(fmt, block, **kw):
    w = pk.MediaWriter(block.shape[1], block.shape[0], fmt)
    return w.write(PacketType.STEM, block, session=5, seq=9, timestamp=256, send_time=77,
                   key=KEY, stem=1, **kw)


EDGES = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5 / 32768, 1.5 / 32768, -0.5 / 32768,
                  -2.5 / 32768, 32767.5 / 32768, -32768.5 / 32768, 1e9, -1e9, 1e-30],
                 np.float32)


@pytest.mark.parametrize("channels,frames", [(2, 256), (1, 128), (2, 64)])
def test_fused_s16_matches_the_reference_bit_for_bit(channels, frames):
    rng = np.random.default_rng(frames)
    block = (rng.standard_normal((channels, frames)) * 0.7).astype(np.float32)
    block.flat[:EDGES.size] = EDGES  # saturation and rounding ties
    d = _write(SampleFormat.S16LE, block)
    pcm = np.frombuffer(d, "<i2", count=channels * frames, offset=HEADER_SIZE)
    np.testing.assert_array_equal(pcm.reshape(frames, channels), reference_s16(block))
    h = pk.decode_header(d)
    assert pk.check_tag(d, KEY) and h.stem == 1 and h.payload_len == 2 * channels * frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=64))
def test_fused_s16_property(values):
    block = np.resize(np.array(values, np.float32), (2, 256))
    d = _write(SampleFormat.S16LE, block)
    pcm = np.frombuffer(d, "<i2", count=512, offset=HEADER_SIZE).reshape(256, 2)
    np.testing.assert_array_equal(pcm, reference_s16(block))


@pytest.mark.parametrize("fmt,frames", [(SampleFormat.S16LE, 256), (SampleFormat.F32LE, 128)])
def test_reference_hot_path_agrees_with_the_current_one(fmt, frames):
    """The benchmark's 'before' must do the same work: same datagram, same samples."""
    from stemlink.bench import frontend_reference as ref

    block = (np.random.default_rng(3).standard_normal((2, frames)) * 0.6).astype(np.float32)
    kw = dict(session=5, seq=9, timestamp=256, send_time=77, key=KEY, stem=1)
    d = pk.MediaWriter(frames, 2, fmt).write(PacketType.STEM, block, **kw)
    assert ref.MediaWriter(frames, 2, fmt).write(PacketType.STEM, block, **kw) == d
    assert ref.decode_header(d) == pk.decode_header(d) and ref.check_tag(d, KEY)
    a, b = np.zeros((2, frames), np.float32), np.ones((2, frames), np.float32)
    ref.read_media(d, pk.decode_header(d), a)
    pk.read_media(d, pk.decode_header(d), b)
    np.testing.assert_array_equal(a, b)


def test_writer_reuses_its_buffer_but_returns_independent_datagrams():
    w = pk.MediaWriter(256, 2, SampleFormat.S16LE)
    a = np.full((2, 256), 0.25, np.float32)
    d1 = w.write(PacketType.STEM, a, session=1, seq=1, timestamp=0, send_time=0, key=KEY)
    d2 = w.write(PacketType.STEM, -a, session=1, seq=2, timestamp=256, send_time=0, key=KEY)
    assert d1 != d2 and pk.check_tag(d1, KEY) and pk.check_tag(d2, KEY)
    out = np.zeros((2, 256), np.float32)
    pk.read_media(d1, pk.decode_header(d1), out)
    np.testing.assert_array_equal(out, a)  # 0.25 is exact in s16


@pytest.mark.parametrize("fmt", [SampleFormat.S16LE, SampleFormat.F32LE])
def test_read_media_round_trip_and_tamper(fmt):
    rng = np.random.default_rng(1)
    frames = 128 if fmt is SampleFormat.F32LE else 256
    block = (rng.random((2, frames), np.float32) - 0.5)
    d = _write(fmt, block)
    out = np.zeros((2, frames), np.float32)
    pk.read_media(d, pk.decode_header(d), out)
    tol = 0.5 / 32768 if fmt is SampleFormat.S16LE else 0.0
    np.testing.assert_allclose(out, block, atol=tol, rtol=0)
    bad = bytearray(d)
    bad[HEADER_SIZE + 3] ^= 0x10  # one payload bit: the tag no longer verifies
    assert not pk.check_tag(bytes(bad), KEY)
    bad = bytearray(d)
    bad[-TAG_SIZE] ^= 1  # one tag bit
    assert not pk.check_tag(bytes(bad), KEY)


def test_f32_nonfinite_samples_become_silence():
    block = np.zeros((2, 128), np.float32)
    block[0, 3], block[1, 7] = np.nan, np.inf
    d = _write(SampleFormat.F32LE, block)
    out = np.ones((2, 128), np.float32)
    pk.read_media(d, pk.decode_header(d), out)
    assert np.isfinite(out).all() and not out.any()


def test_ceiling_arithmetic():
    # 256-frame blocks at 44.1 kHz: 172.27 AUDIO/s and 2 x 172.27 STEM/s per session
    assert ceiling(10.0, 10.0, 256) == int(1e6 / (44100 / 256 * 30.0))
    assert ceiling(1.0, 1.0, 128) < ceiling(1.0, 1.0, 256)


def test_bench_frontend_writes_its_report(tmp_path):
    out = tmp_path / "fe"
    r = subprocess.run([sys.executable, "-m", "stemlink", "bench", "frontend",
                        "--iterations", "200", "--repeats", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "frontend.json").read_text())
    assert {x["format"] for x in res["rows"]} == {"s16le", "f32le"}
    for x in res["rows"]:
        for impl in ("reference", "current"):
            assert x["audio_in"][impl]["min_us"] > 0 and x["stem_out"][impl]["min_us"] > 0
            assert x[f"ceiling_{impl}_with_sendto"] <= x[f"ceiling_{impl}"]
    assert "AUDIO in" in (out / "frontend.md").read_text()
