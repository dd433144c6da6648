"""Whole-file reference for the segment families: demucs.apply.apply_model(model, mix,
shifts=0, split=True, overlap=0.25, transition_power=1) reimplemented over a segment
runner, so that it runs on the exported graph without torch.

Chunks start every `stride` samples; a chunk shorter than the segment (the file's end) is
padded the way TensorChunk.padded does it: centred, real samples on both sides where the
file has them, zeros beyond; the output is trimmed back to the chunk (center_trim).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stemlink.engine.segments import SegmentRunner
from stemlink.engine.streaming_chunked import triangle, whole_stride


def separate_offline_chunked(runner: SegmentRunner, n_stems: int, audio: np.ndarray,
                             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """audio float32 [C, n] -> stems [S, C, n], sample-aligned with the input."""
    c, n = audio.shape
    seg = runner.segment
    stride = whole_stride(seg)
    weight = triangle(seg)
    out = np.zeros((n_stems, c, n), np.float64)
    wsum = np.zeros(n, np.float64)
    offsets = range(0, n, stride)
    chunk = np.zeros((c, seg), np.float32)
    for done, offset in enumerate(offsets):
        length = min(n - offset, seg)
        start = offset - (seg - length) // 2
        a, b = max(0, start), min(n, start + seg)
        chunk[...] = 0.0
        chunk[:, a - start:b - start] = audio[:, a:b]
        y = runner.run(chunk)
        trim = (seg - length) // 2
        out[:, :, offset:offset + length] += weight[:length] * y[:, :, trim:trim + length]
        wsum[offset:offset + length] += weight[:length]
        if progress:
            progress(done + 1, len(offsets))
    return (out / wsum).astype(np.float32)
