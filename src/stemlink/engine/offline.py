"""Whole-file separation: the reference the streaming output is measured against.

The model runs on consecutive segments of the offline graph's length (512 frames, as in
Spleeter) over the whole file; masks are applied to the Hann STFT and overlap-added.
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
    n_fft, hop, fb = card.n_fft, card.hop, card.bins
    c, n = audio.shape
    s = len(card.stems)
    pair = dsp.window_pair("standard", n_fft, hop)
    out = np.zeros((s, c, n), np.float32)
    if n == 0:
        return out
    spec = dsp.stft(audio, n_fft, hop, pair.analysis)  # [C, T, nb]
    t_total = spec.shape[1]
    seg = backend.inputs.shape[2]
    batch = backend.inputs.shape[0]
    starts = list(range(0, t_total, seg))
    for done, i in enumerate(range(0, len(starts), batch)):
        group = starts[i:i + batch]
        backend.inputs[...] = 0.0
        for b, t0 in enumerate(group):
            t1 = min(t0 + seg, t_total)
            backend.inputs[b, :, :t1 - t0, :] = np.abs(spec[:, t0:t1, :fb])
        masks = backend.infer()
        for b, t0 in enumerate(group):
            t1 = min(t0 + seg, t_total)
            full = np.zeros((s, c, t1 - t0, spec.shape[2]), np.float32)
            full[..., :fb] = masks[b, :, :, :t1 - t0, :]
            if card.mask_extension == "average":
                full[..., fb:] = full[..., :fb].mean(axis=-1, keepdims=True)
            frames = np.fft.irfft(full * spec[None, :, t0:t1, :], n=n_fft, axis=-1)
            dsp.overlap_add(frames.astype(np.float32), hop, pair.synthesis, t0, out)
        if progress:
            progress(min((done + 1) * batch, len(starts)), len(starts))
    return out
