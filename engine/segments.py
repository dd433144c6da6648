"""Segment runners: one fixed-length waveform segment [C, L] in, stems [S, C, L] out.

The families whose graphs take a whole segment (HTDemucs: `hybrid`; MDX-Net/UVR:
`complex-spectrogram`) keep their STFT and iSTFT outside the graph. Those transforms are
here, in numpy, written to match torch.stft/torch.istft (centred, reflect padding,
periodic Hann, window-envelope normalisation) as the models' own code calls them:
- HTDemucs `_spec`/`_ispec` (demucs/htdemucs.py): normalised STFT, extra reflect padding
  of 1.5 hops, last bin dropped, two frames trimmed each side; complex as channels
  (c0-re, c0-im, c1-re, ...).
- MDX-Net (UVR's STFT class): plain STFT, the lowest dim_f bins, channels L-re, L-im,
  R-re, R-im; the graph outputs the named stem's spectrogram, the complement is the
  mixture minus it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError


def hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft(x: np.ndarray, n_fft: int, hop: int, normalized: bool) -> np.ndarray:
    """torch.stft(center=True, pad_mode='reflect', periodic Hann): [..., n] ->
    complex64 [..., n_fft//2+1, 1 + n//hop] (float32 FFTs, as torch computes them)."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float32), [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    t = 1 + (xp.shape[-1] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft, axis=-1)[..., ::hop, :][..., :t, :]
    w = hann(n_fft).astype(np.float32)
    if normalized:
        w /= np.float32(math.sqrt(n_fft))
    z = np.fft.rfft(frames * w, axis=-1)  # [..., T, F]
    return np.swapaxes(z, -1, -2)


def istft(z: np.ndarray, n_fft: int, hop: int, normalized: bool, length: int) -> np.ndarray:
    """torch.istft(center=True, periodic Hann, length=length): [..., F, T] -> [..., length]."""
    t = z.shape[-1]
    w = hann(n_fft).astype(np.float32)
    frames = np.fft.irfft(np.swapaxes(z.astype(np.complex64, copy=False), -1, -2), n=n_fft,
                          axis=-1)  # [..., T, n_fft] float32
    frames *= (w * np.float32(math.sqrt(n_fft))) if normalized else w
    total = n_fft + hop * (t - 1)
    y = np.zeros(z.shape[:-2] + (total,), np.float32)
    env = np.zeros(total, np.float32)
    w2 = w * w
    for k in range(t):
        y[..., k * hop:k * hop + n_fft] += frames[..., k, :]
        env[k * hop:k * hop + n_fft] += w2
    start = n_fft // 2
    end = min(start + length, total)
    out = np.zeros(z.shape[:-2] + (length,), np.float32)
    out[..., :end - start] = y[..., start:end] / np.maximum(env[start:end], 1e-11)
    return out


def _reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """demucs.hdemucs.pad1d(mode='reflect'): zero-extends first when x is too short."""
    n = x.shape[-1]
    extra = max(left, right) - n + 1 if max(left, right) >= n else 0
    if extra:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(extra // 2, extra - extra // 2)])
        left, right = left - extra // 2, right - (extra - extra // 2)
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode="reflect")


def demucs_spec(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """HTDemucs._spec + _magnitude (cac): [C, L] -> float32 [2C, n_fft//2, ceil(L/hop)]."""
    n = x.shape[-1]
    le = math.ceil(n / hop)
    pad = hop // 2 * 3
    z = stft(_reflect_pad(x, pad, pad + le * hop - n), n_fft, hop, True)[..., :-1, 2:2 + le]
    c = x.shape[0]
    return np.stack([z.real, z.imag], axis=1).reshape(2 * c, n_fft // 2, le).astype(np.float32)


def demucs_ispec(m: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """HTDemucs._mask (cac) + _ispec: [S, 2C, n_fft//2, T] -> [S, C, length]."""
    s, c2, f, t = m.shape
    z = m.reshape(s, c2 // 2, 2, f, t)
    zc = np.zeros((s, c2 // 2, f + 1, t + 4), np.complex64)
    zc.real[:, :, :f, 2:t + 2] = z[:, :, 0]
    zc.imag[:, :, :f, 2:t + 2] = z[:, :, 1]
    z = zc
    pad = hop // 2 * 3
    le = hop * math.ceil(length / hop) + 2 * pad
    return istft(z, n_fft, hop, True, le)[..., pad:pad + length]


def mdx_spec(x: np.ndarray, n_fft: int, hop: int, dim_f: int) -> np.ndarray:
    """UVR MDX STFT: [C, L] -> float32 [2C, dim_f, 1 + L//hop] (L-re, L-im, R-re, R-im)."""
    z = stft(x, n_fft, hop, False)[:, :dim_f]
    c, f, t = z.shape
    return np.stack([z.real, z.imag], axis=1).reshape(2 * c, f, t).astype(np.float32)


def mdx_ispec(m: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """UVR MDX iSTFT: [2C, dim_f, T] -> [C, length]; bins above dim_f are zero."""
    c2, f, t = m.shape
    z = np.zeros((c2 // 2, n_fft // 2 + 1, t), np.complex64)
    z.real[:, :f] = m[0::2]
    z.imag[:, :f] = m[1::2]
    return istft(z, n_fft, hop, False, length)


class SegmentRunner(Protocol):
    segment: int

    def run(self, mix: np.ndarray) -> np.ndarray: ...


class HybridRunner:
    """HTDemucs: time branch + iSTFT of the spectral branch."""

    def __init__(self, card: ModelCard, backend) -> None:
        self.card, self.backend, self.segment = card, backend, card.segment
        self._mix, self._spec = backend.inputs["mix"], backend.inputs["spec"]
        self._out = np.zeros((len(card.stems), card.channels, card.segment), np.float32)

    def run(self, mix: np.ndarray) -> np.ndarray:
        """mix [C, L] -> view [S, C, L], valid until the next call."""
        c = self.card
        self._mix[0] = mix
        self._spec[0] = demucs_spec(mix, c.n_fft, c.hop)
        out = self.backend.infer()
        np.add(out["time"][0], demucs_ispec(out["spec_out"][0], c.n_fft, c.hop, c.segment),
               out=self._out, casting="unsafe")
        return self._out


class MdxRunner:
    """MDX-Net/UVR: the graph returns the first stem's spectrogram; the others are the
    mixture minus the stems before them (one complement for a one-stem graph)."""

    def __init__(self, card: ModelCard, backend) -> None:
        self.card, self.backend, self.segment = card, backend, card.segment
        (self._in_name,) = [t.name for t in card.streaming.inputs]
        (self._out_name,) = [t.name for t in card.streaming.outputs]
        self._out = np.zeros((len(card.stems), card.channels, card.segment), np.float32)

    def run(self, mix: np.ndarray) -> np.ndarray:
        c = self.card
        self.backend.inputs[self._in_name][0] = mdx_spec(mix, c.n_fft, c.hop, c.bins)
        y = self.backend.infer()[self._out_name][0]
        np.copyto(self._out[0], mdx_ispec(y, c.n_fft, c.hop, c.segment), casting="unsafe")
        np.subtract(mix, self._out[0], out=self._out[1])
        return self._out


def make_runner(card: ModelCard, backend) -> SegmentRunner:
    if card.representation == "hybrid":
        return HybridRunner(card, backend)
    if card.representation == "complex-spectrogram":
        return MdxRunner(card, backend)
    raise EngineError(f"representation {card.representation!r} has no segment runner")
