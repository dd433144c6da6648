"""STFT windows and offline (whole-signal) STFT/iSTFT, as plain functions over arrays.

Frame grid, shared by the offline reference and the streaming separator: frame j covers
input samples [j*hop - (n_fft - hop), j*hop + hop), i.e. its last hop is [j*hop, (j+1)*hop).
Frames that reach before sample 0 see zeros. This is Spleeter's centred grid shifted by one
frame index, with one extra leading frame so that every sample is covered by n_fft/hop
frames and the overlap-add envelope is constant everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNTHESIS_MODES = ("standard", "asymmetric")


def hann(n: int) -> np.ndarray:
    """Periodic Hann window (the one torch.stft and Spleeter use)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


@dataclass(frozen=True)
class WindowPair:
    """Analysis window applied before the FFT whose spectrum is masked and resynthesised,
    and the synthesis window applied after the inverse FFT.

    `support` is how many samples at the end of each frame the synthesis window covers;
    it sets the delay floor: D = support + (L + H - 1) * hop - 1.
    """

    mode: str
    analysis: np.ndarray  # float32 [n_fft]
    synthesis: np.ndarray  # float32 [n_fft], zero outside the last `support` samples
    support: int  # samples


def synthesis_support(mode: str, n_fft: int, hop: int) -> int:
    """Samples at the end of a frame that its synthesis window covers."""
    if mode not in SYNTHESIS_MODES:
        raise ValueError(f"synthesis mode must be one of {SYNTHESIS_MODES}, not {mode!r}")
    return n_fft if mode == "standard" else 2 * hop


def window_pair(mode: str, n_fft: int, hop: int) -> WindowPair:
    support = synthesis_support(mode, n_fft, hop)
    if mode == "standard":
        w = hann(n_fft)
        # Hann analysis and synthesis: sum over shifts of w^2 is constant (1.5 at hop n/4);
        # dividing the synthesis window by it makes analysis*synthesis overlap-add to 1.
        envelope = _overlap_add_sum(w * w, hop)
        return WindowPair(mode, w.astype(np.float32), (w / envelope).astype(np.float32), support)
    # Asymmetric pair after Mauler & Martin: analysis rises over n_fft - hop samples and
    # falls over the last hop; synthesis lives on the last 2*hop samples only, chosen so
    # that analysis * synthesis is a Hann of length 2*hop there, which overlap-adds to 1
    # at hop spacing. Only the newest 2*hop samples of a frame reach the output.
    if n_fft < 2 * hop:
        raise ValueError("asymmetric synthesis needs n_fft >= 2 * hop")
    rise = n_fft - hop
    ana = np.empty(n_fft)
    ana[:rise] = np.sqrt(hann(2 * rise)[:rise])
    ana[rise:] = np.sqrt(hann(2 * hop)[hop:])
    syn = np.zeros(n_fft)
    product = hann(2 * hop)
    tail = slice(n_fft - 2 * hop, n_fft)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(ana[tail] > 0, product / ana[tail], 0.0)
    syn[tail] = s
    return WindowPair(mode, ana.astype(np.float32), syn.astype(np.float32), support)


def _overlap_add_sum(w: np.ndarray, hop: int) -> float:
    n = len(w)
    total = np.zeros(hop)
    for k in range(0, n, hop):
        total += w[k:k + hop]
    if np.ptp(total) > 1e-9 * total.max():
        raise ValueError("window does not overlap-add to a constant at this hop")
    return float(total.mean())


def n_frames(n_samples: int, n_fft: int, hop: int) -> int:
    """Frames needed so that every one of n_samples is covered by n_fft/hop frames."""
    if n_samples <= 0:
        return 0
    return (n_samples - 1) // hop + n_fft // hop


def stft(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray, first: int = 0,
         count: int | None = None) -> np.ndarray:
    """x: [C, n] -> complex64 [C, T, n_fft//2+1] on the shared frame grid; `first` and
    `count` select a range of frames, so long files can be transformed piecewise."""
    c, n = x.shape
    total = n_frames(n, n_fft, hop)
    count = total - first if count is None else min(count, total - first)
    if count <= 0:
        return np.zeros((c, 0, n_fft // 2 + 1), np.complex64)
    start = first * hop - (n_fft - hop)  # first sample of the first frame (may be < 0)
    seg = np.zeros((c, (count - 1) * hop + n_fft), np.float32)
    a, b = max(start, 0), min(start + seg.shape[1], n)
    if a < b:
        seg[:, a - start:b - start] = x[:, a:b]
    idx = np.arange(count)[:, None] * hop + np.arange(n_fft)[None, :]
    return np.fft.rfft(seg[:, idx] * window, axis=-1).astype(np.complex64)


def overlap_add(frames: np.ndarray, hop: int, synthesis: np.ndarray, first_frame: int,
                out: np.ndarray) -> None:
    """Add time-domain frames [..., T, n_fft] (already inverse-transformed) into `out`
    [..., n] at their grid positions, starting at frame index first_frame."""
    n_fft = frames.shape[-1]
    n = out.shape[-1]
    for k in range(frames.shape[-2]):
        start = (first_frame + k) * hop - (n_fft - hop)
        a, b = max(start, 0), min(start + n_fft, n)
        if a < b:
            out[..., a:b] += frames[..., k, a - start:b - start] * synthesis[a - start:b - start]
