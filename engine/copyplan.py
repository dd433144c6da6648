"""Which bytes cross PCIe per inference: copy plans for the GPU backends (pure, no CUDA).

The model's input is a window of W magnitude frames per (slot, channel); between two
inferences of one stream the window moves by H frames (H = 1 or 2 on a GPU): W - H frames
were already on the device. Its output is W frames of masks, of which the separator reads
only the frames [W - L - H, W - L) (the H frames that become final, L frames from the
end). So per inference and slot, with W = 64, C = S = 2, 1024 bins, float32:

- full upload 512 KiB, shifted upload H/W of it (8 KiB at H = 1), plus two
  device-to-device copies of the kept W - H frames (device bandwidth, ~TB/s);
- full download 1 MiB, tail download (L + H)/W of it (16 KiB at H = 1, L = 0).

At batch 1 the full copies cost ~0.17 ms of a 1.12 ms step on an H100
(../shared/gpu/README.md); at batch 256, where the model itself costs ~76 µs per window,
full copies would cost more than the model. Every address in a plan is fixed at
activate(), so the copies can sit inside a captured CUDA graph.

A plan is a list of `Copy` (cudaMemcpy2DAsync arguments with named buffers); `run_on_host`
executes one with numpy on byte arrays: the reference semantics the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemlink.engine.errors import EngineError

H2D, D2H, D2D = "H2D", "D2H", "D2D"


@dataclass(frozen=True)
class Copy:
    """cudaMemcpy2DAsync(dst + dst_off, dpitch, src + src_off, spitch, width, height)."""

    kind: str
    dst: str  # buffer name: h_in, d_in, d_tmp, d_out, h_out
    dst_off: int
    dpitch: int
    src: str
    src_off: int
    spitch: int
    width: int  # bytes per row
    height: int  # rows

    @property
    def nbytes(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Geometry:
    batch: int
    channels: int
    stems: int
    frames: int  # W
    bins: int
    itemsize: int = 4

    @property
    def frame_bytes(self) -> int:
        return self.bins * self.itemsize

    @property
    def row_bytes(self) -> int:
        return self.frames * self.frame_bytes

    @property
    def in_rows(self) -> int:
        return self.batch * self.channels

    @property
    def out_rows(self) -> int:
        return self.batch * self.stems * self.channels

    @property
    def in_bytes(self) -> int:
        return self.in_rows * self.row_bytes

    @property
    def out_bytes(self) -> int:
        return self.out_rows * self.row_bytes


def upload_plan(g: Geometry, new_frames: int | None) -> list[Copy]:
    """Copies that make d_in equal h_in. `new_frames` = k: the caller guarantees that
    every slot's window moved by exactly k frames since the previous upload (same stream
    in the same slot, no skipped or reset window), so d_in's frames [k, W) are its frames
    [0, W - k) now; only the newest k frames come from the host. None: full upload."""
    w, fb, row = g.frames, g.frame_bytes, g.row_bytes
    if new_frames is None or new_frames >= w:
        return [Copy(H2D, "d_in", 0, g.in_bytes, "h_in", 0, g.in_bytes, g.in_bytes, 1)]
    k = new_frames
    if k < 1:
        raise EngineError(f"new_frames must be >= 1, not {k}")
    keep = (w - k) * fb
    # the kept frames overlap their destination: go through d_tmp (cudaMemcpy2D does not
    # allow overlapping source and destination)
    return [Copy(D2D, "d_tmp", 0, row, "d_in", k * fb, row, keep, g.in_rows),
            Copy(D2D, "d_in", 0, row, "d_tmp", 0, row, keep, g.in_rows),
            Copy(H2D, "d_in", keep, row, "h_in", keep, row, k * fb, g.in_rows)]


def download_plan(g: Geometry, frames: tuple[int, int] | None) -> list[Copy]:
    """Copies that bring the output frames [lo, hi) of every (slot, stem, channel) back to
    h_out (the rest of h_out is left as it was). None: everything."""
    if frames is None or tuple(frames) == (0, g.frames):
        return [Copy(D2H, "h_out", 0, g.out_bytes, "d_out", 0, g.out_bytes, g.out_bytes, 1)]
    lo, hi = frames
    if not 0 <= lo < hi <= g.frames:
        raise EngineError(f"output frames [{lo}, {hi}) are outside the window of {g.frames}")
    fb, row = g.frame_bytes, g.row_bytes
    return [Copy(D2H, "h_out", lo * fb, row, "d_out", lo * fb, row, (hi - lo) * fb,
                 g.out_rows)]


def separator_frames(window: int, hop_frames: int, lookahead: int) -> tuple[int, int]:
    """The output frames a streaming separator reads after an inference: the H frames
    that become final, L frames before the window's end (StreamingSeparator.complete)."""
    lo, hi = window - lookahead - hop_frames, window - lookahead
    if lo < 0:
        raise EngineError(f"H + L = {hop_frames + lookahead} exceeds the window of {window}")
    return lo, hi


def union_frames(ranges: list[tuple[int, int]]) -> tuple[int, int] | None:
    """One download range covering every separator sharing a batched backend."""
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def run_on_host(plan: list[Copy], buffers: dict[str, np.ndarray]) -> None:
    """Execute a plan with numpy on uint8 arrays (cudaMemcpy2D semantics, row by row)."""
    for c in plan:
        dst, src = buffers[c.dst], buffers[c.src]
        if c.width > min(c.dpitch, c.spitch) and c.height > 1:
            raise EngineError("row wider than its pitch")
        for r in range(c.height):
            d0, s0 = c.dst_off + r * c.dpitch, c.src_off + r * c.spitch
            if d0 + c.width > dst.size or s0 + c.width > src.size:
                raise EngineError(f"copy {c} runs past a buffer")
            dst[d0:d0 + c.width] = src[s0:s0 + c.width]
