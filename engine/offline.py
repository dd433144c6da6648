"""Whole-file separation: the reference the streaming output is measured against.

The model runs on consecutive segments of the offline graph's length (512 frames, as in
Spleeter) over the whole file; masks are applied to the Hann STFT and overlap-added. The
STFT is taken segment by segment, so memory stays bounded on long files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stemlink.engine import dsp
from stemlink.engine.backend import Backend
from stemlink.engine.card import ModelCard


def separate_offline(card: ModelCard, backend: Backend, audio: np.ndarray,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """audio float32 [C, n] -> stems [S, C, n], sample-aligned with the input (no delay)."""
    n_fft, hop, fb, nb = card.n_fft, card.hop, card.bins, card.n_bins
    c, n = audio.shape
    s = len(card.stems)
    pair = dsp.window_pair("standard", n_fft, hop)
    out = np.zeros((s, c, n), np.float32)
    t_total = dsp.n_frames(n, n_fft, hop)
    seg, batch = backend.inputs.shape[2], backend.inputs.shape[0]
    starts = list(range(0, t_total, seg))
    if progress:
        progress(0, len(starts))
    for done, i in enumerate(range(0, len(starts), batch)):
        group = starts[i:i + batch]
        first = group[0]
        spec = dsp.stft(audio, n_fft, hop, pair.analysis, first, len(group) * seg)
        backend.inputs[...] = 0.0
        for b, t0 in enumerate(group):
            part = spec[:, t0 - first:t0 - first + seg, :fb]
            backend.inputs[b, :, :part.shape[1], :] = np.abs(part)
        masks = backend.infer()
        for b, t0 in enumerate(group):
            k = min(seg, t_total - t0)
            full = np.zeros((s, c, k, nb), np.float32)
            full[..., :fb] = masks[b, :, :, :k, :]
            if card.mask_extension == "average":
                full[..., fb:] = full[..., :fb].mean(axis=-1, keepdims=True)
            frames = np.fft.irfft(full * spec[None, :, t0 - first:t0 - first + k, :],
                                  n=n_fft, axis=-1)
            dsp.overlap_add(frames.astype(np.float32), hop, pair.synthesis, t0, out)
        if progress:
            progress(min((done + 1) * batch, len(starts)), len(starts))
    return out
