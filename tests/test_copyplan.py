"""Copy plans of the GPU backends, executed on host memory with cudaMemcpy2D semantics
(copyplan.run_on_host): the device window must equal the host window after every
shifted upload, and the tail download must hold everything the real separator reads."""

import numpy as np
import pytest

from stemlink.engine import copyplan
from stemlink.engine.copyplan import Geometry, download_plan, run_on_host, upload_plan
from stemlink.engine.errors import EngineError
from stemlink.engine.presets import StreamConfig
from stemlink.engine.streaming import StreamingSeparator
from stemlink.separate import stream_array


def _buffers(g: Geometry) -> dict[str, np.ndarray]:
    return {"h_in": np.zeros(g.in_bytes, np.uint8), "d_in": np.zeros(g.in_bytes, np.uint8),
            "d_tmp": np.zeros(g.in_bytes, np.uint8),
            "h_out": np.zeros(g.out_bytes, np.uint8), "d_out": np.zeros(g.out_bytes, np.uint8)}


def _view(buf: np.ndarray, shape) -> np.ndarray:
    return buf.view(np.float32).reshape(shape)


@pytest.mark.parametrize("g,k", [
    (Geometry(batch=3, channels=2, stems=2, frames=8, bins=5), 1),
    (Geometry(batch=3, channels=2, stems=2, frames=8, bins=5), 3),
    (Geometry(batch=1, channels=1, stems=4, frames=6, bins=7), 5),
    (Geometry(batch=2, channels=2, stems=2, frames=64, bins=1024), 1),
])
def test_shifted_uploads_track_a_moving_window(g, k):
    """Each slot streams its own tape of frames; after each shifted upload the device
    window equals the host window, as after a full upload."""
    rng = np.random.default_rng(k)
    steps = 5
    tape = rng.random((g.batch, g.channels, g.frames + steps * k, g.bins), np.float32)
    b = _buffers(g)
    h_in = _view(b["h_in"], (g.batch, g.channels, g.frames, g.bins))
    d_in = _view(b["d_in"], h_in.shape)
    h_in[...] = tape[:, :, :g.frames]
    run_on_host(upload_plan(g, None), b)
    np.testing.assert_array_equal(d_in, h_in)
    shifted = upload_plan(g, k)
    moved = sum(c.nbytes for c in shifted if c.kind == copyplan.H2D)
    assert moved == g.in_bytes * k // g.frames  # only the newest k frames cross PCIe
    for t in range(1, steps + 1):
        h_in[...] = tape[:, :, t * k:t * k + g.frames]
        run_on_host(shifted, b)
        np.testing.assert_array_equal(d_in, h_in)


def test_shift_without_its_precondition_is_visible():
    """The caller's promise matters: a window that did not move by k is not tracked."""
    g = Geometry(batch=1, channels=1, stems=1, frames=4, bins=2)
    b = _buffers(g)
    h_in = _view(b["h_in"], (1, 1, 4, 2))
    h_in[...] = np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2)
    run_on_host(upload_plan(g, None), b)
    h_in[...] = 100 + np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2)  # a new stream
    run_on_host(upload_plan(g, 1), b)
    assert not np.array_equal(_view(b["d_in"], h_in.shape), h_in)


def test_tail_download_moves_only_its_frames():
    g = Geometry(batch=2, channels=2, stems=3, frames=8, bins=4)
    b = _buffers(g)
    shape = (2, 3, 2, 8, 4)
    d_out, h_out = _view(b["d_out"], shape), _view(b["h_out"], shape)
    d_out[...] = np.random.default_rng(0).random(shape, np.float32)
    h_out[...] = -1.0
    plan = download_plan(g, (5, 7))
    assert sum(c.nbytes for c in plan) == g.out_bytes * 2 // 8
    run_on_host(plan, b)
    np.testing.assert_array_equal(h_out[..., 5:7, :], d_out[..., 5:7, :])
    assert (h_out[..., :5, :] == -1).all() and (h_out[..., 7:, :] == -1).all()
    run_on_host(download_plan(g, None), b)
    np.testing.assert_array_equal(h_out, d_out)


def test_plan_arguments_are_checked():
    g = Geometry(batch=1, channels=2, stems=2, frames=8, bins=4)
    with pytest.raises(EngineError, match="new_frames"):
        upload_plan(g, 0)
    with pytest.raises(EngineError, match="outside the window"):
        download_plan(g, (6, 9))
    with pytest.raises(EngineError, match="exceeds the window"):
        copyplan.separator_frames(8, 4, 5)
    assert upload_plan(g, 8) == upload_plan(g, None)  # a full move is a full upload
    assert copyplan.union_frames([(62, 63), (60, 64)]) == (60, 64)
    assert copyplan.union_frames([]) is None


class _TailOnly:
    """Wraps the real CPU backend: after each inference every output frame outside
    `frames` is replaced by NaN, as if only the tail had been downloaded."""

    def __init__(self, inner, frames):
        self.inner, self.frames = inner, frames
        self.name, self.batch = inner.name, inner.batch
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def infer(self):
        out = self.inner.infer()
        lo, hi = self.frames
        out[..., :lo, :] = np.nan
        out[..., hi:, :] = np.nan
        return out


@pytest.mark.parametrize("h,look", [(1, 0), (2, 0), (4, 4)])
def test_separator_reads_only_the_tail_frames(engine, example, h, look):
    """The real separator on real audio gives bit-identical output when every frame
    outside separator_frames() is garbage: the tail download is sufficient."""
    card, be = engine.card, engine.backend
    x = example[0][:, :3 * card.sample_rate]
    cfg = StreamConfig(h, look, "standard")
    want = stream_array(StreamingSeparator(card, be, cfg), x)
    tail = copyplan.separator_frames(card.window_frames, h, look)
    got = stream_array(StreamingSeparator(card, _TailOnly(be, tail), cfg), x)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
