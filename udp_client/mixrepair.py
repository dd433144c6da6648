"""Mixture consistency: repair stems from the mixture the client itself sent, sans-IO.

A mask-based separator's stems add up to its input, delayed by D: Spleeter's two ratio
masks sum to one, so vocals + accompaniment = the mixture, exactly, below the band the
model leaves out (it zeroes bins >= 1024, above 11 kHz; measured residual -21 dB over a
whole song, -55 dB and lower below 11 kHz). The client has the mixture. So:

- a stem block lost on the way down is the mixture minus the other stems (if several
  stems of a block are lost, the mixture's remainder is shared among the concealed ones
  by their energy);
- where the server had to conceal a lost *input* block, the stems sum to the concealed
  mixture: in the output blocks it flags CONCEALED, wherever the stems are far from adding
  up to the true mixture (that block, delayed by D), the difference is shared among all
  stems by their energy.

Sharing "by energy" in the time domain is coarse, and the model's sum holds only in the
band it separates (above it both stems are silent; the mixture is not). So the archival
path (`send` writing files, where the whole take is in hand) repairs per frequency band
instead (`band_trust`, `band_repair`): an STFT of ~46 ms frames; each bin's residual
goes to the stems in proportion to their magnitude there (the model's outputs are ratio
masks of the mixture that sum to one, so a stem's share of the summed magnitudes is its
mask), and only in proportion to how far the model's sum is trusted in that bin, learned
from blocks that arrived whole (a bin where the stems never add up to the mixture, e.g.
above the model's band, takes none of it). The live playout buffer repairs one block as
it plays it and cannot reach back into what has played: it does the same within the
block (`repair(..., bands=True)`: one FFT of the block, the shares from the stems'
windowed spectra, a trust learned online from clean blocks by `observe`), on scratch
arrays allocated in __init__.

Whether the model has this property is measured, not assumed: `observe()` on complete
blocks keeps the median ratio of residual to mixture energy over the last 64, and
`enabled` turns on only when it is below `MAX_RESIDUAL` (-10 dB) after `MIN_BLOCKS`
blocks.
"""

from __future__ import annotations

import numpy as np

MAX_RESIDUAL = 0.1  # residual/mixture energy at most this (-10 dB) to trust the sum
MIN_BLOCKS = 32
WINDOW = 64  # blocks the ratio is the median of
QUIET = 1e-8  # mean square below which a block says nothing (near silence)
OFF_FACTOR = 10.0  # a flagged block is repaired when its residual exceeds 10x the usual
OFF_FLOOR = 1e-4  # (-40 dB: a model that adds up exactly still has s16 rounding)
FRAME_S = 0.046  # STFT frame (2048 samples at 44.1 kHz), hop a quarter of it
SHARE_SMOOTH = 1  # a stem's magnitude is averaged over this many frames each side
SILENT = 1e-7  # summed stem magnitude below this: no mask to read, shared equally
CHUNK_FRAMES = 512  # band_trust reads the take this many frames at a time


class MixtureRepair:
    def __init__(self, n_stems: int, channels: int, block: int) -> None:
        self.n_stems, self.channels, self.block = n_stems, channels, block
        self._res = np.zeros((channels, block), np.float32)
        self._tmp = np.zeros((channels, block), np.float32)
        self._e = np.zeros(n_stems, np.float64)
        self.ratio = 1.0  # residual / mixture energy: median of recent blocks
        self._ratios = np.zeros(WINDOW, np.float64)
        self._sorted = np.zeros(WINDOW, np.float64)
        self.observed = 0
        self.repaired = 0  # stem blocks (or stretches) repaired
        # per-band repair within one block (the live path): FFT scratch, the trust per bin
        nb = block // 2 + 1
        self._win = (0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(block) + 0.5) / block))
        self._x = np.zeros((channels, block), np.float64)
        self._z = np.zeros((channels, nb), np.complex128)  # the residual's spectrum
        self._zs = np.zeros((channels, nb), np.complex128)
        self._abs = np.zeros((channels, nb), np.float64)
        self._mag = np.zeros((n_stems, nb), np.float64)
        self._tot = np.zeros(nb, np.float64)
        self._w = np.zeros(nb, np.float64)
        self._quiet = np.zeros(nb, bool)
        self._er = np.zeros(nb, np.float64)  # residual energy per bin, clean blocks
        self._em = np.zeros(nb, np.float64)  # mixture energy per bin, clean blocks
        self.trust = np.ones(nb, np.float64)  # 1 - er / em, clipped; 1 until observed

    @property
    def enabled(self) -> bool:
        return self.observed >= MIN_BLOCKS and self.ratio <= MAX_RESIDUAL

    def observe(self, blocks: np.ndarray, mix: np.ndarray, clean: bool = False) -> None:
        """A block every stem of which arrived. The ratio is the median over the last
        WINDOW blocks (robust to a block whose input the server concealed, and to near
        silence). clean: the block does not depend on concealed input either (not
        flagged): it also teaches the per-bin trust (a whole block only)."""
        n = mix.shape[-1]
        em = float(np.sum(mix * mix))
        if em <= QUIET * mix.size:
            return
        self._residual(blocks, mix, 0, n)
        if clean and n == self.block:
            self._learn_bands(mix)
        er = float(np.sum(self._res[:, :n] * self._res[:, :n]))
        self._ratios[self.observed % WINDOW] = er / em
        self.observed += 1
        m = min(self.observed, WINDOW)
        np.copyto(self._sorted[:m], self._ratios[:m])
        self._sorted[:m].sort()
        self.ratio = float(self._sorted[m // 2])

    def repair(self, blocks: np.ndarray, trusted: np.ndarray | None, mix: np.ndarray,
               lo: int = 0, hi: int | None = None, into: np.ndarray | None = None,
               bands: bool = False) -> bool:
        """Share mix - sum(blocks) over samples [lo, hi) among the untrusted stems
        (trusted None: all of them), by their energy there. blocks [S, C, n], mix [C, n].
        into: add the shares there ([S, C, n]) instead of to blocks. bands (a whole
        block only): per frequency bin instead, by the untrusted stems' magnitudes in
        that bin and through the learned trust (`_repair_bands`)."""
        if not self.enabled:
            return False
        hi = mix.shape[-1] if hi is None else hi
        if hi <= lo:
            return False
        if bands and lo == 0 and hi == self.block and into is None:
            self._repair_bands(blocks, trusted, mix)
            self.repaired += 1
            return True
        self._residual(blocks, mix, lo, hi)
        n = hi - lo
        e = self._e
        for s in range(self.n_stems):
            untrusted = trusted is None or not trusted[s]
            seg = blocks[s, :, lo:hi]
            e[s] = float(np.sum(seg * seg)) + 1e-9 if untrusted else 0.0
        total = float(e.sum())
        if total <= 0.0:
            return False
        for s in range(self.n_stems):
            if e[s] > 0.0:
                np.multiply(self._res[:, :n], e[s] / total, out=self._tmp[:, :n])
                (blocks if into is None else into)[s, :, lo:hi] += self._tmp[:, :n]
        self.repaired += 1
        return True

    def off(self, blocks: np.ndarray, mix: np.ndarray) -> bool:
        """Whether a block's stems are far from adding up to the mixture: a residual above
        OFF_FACTOR times the model's measured ratio (the samples an input concealment
        actually changed, not the whole stretch the server flagged)."""
        if not self.enabled:
            return False
        self._residual(blocks, mix, 0, mix.shape[-1])
        em = float(np.sum(mix * mix))
        er = float(np.sum(self._res * self._res))
        return er > OFF_FACTOR * max(self.ratio, OFF_FLOOR) * max(em, 1e-12)

    def repair_if_off(self, blocks: np.ndarray, mix: np.ndarray, bands: bool = False) -> bool:
        """A block whose stems may not add up (the server flagged it CONCEALED: it depends
        on input it had to conceal): repaired, among all stems, only where `off`."""
        return self.off(blocks, mix) and self.repair(blocks, None, mix, bands=bands)

    def _learn_bands(self, mix: np.ndarray) -> None:
        """Add a clean block's residual (in _res) and mixture energy per bin."""
        np.copyto(self._x, self._res)
        np.fft.rfft(self._x, axis=-1, out=self._z)
        np.abs(self._z, out=self._abs)
        self._abs *= self._abs
        self._er += self._abs[0]
        for c in range(1, self.channels):
            self._er += self._abs[c]
        np.copyto(self._x, mix)
        np.fft.rfft(self._x, axis=-1, out=self._z)
        np.abs(self._z, out=self._abs)
        self._abs *= self._abs
        for c in range(self.channels):
            self._em += self._abs[c]
        # trust = clip(1 - er / em, 0, 1), 1 where the mixture had nothing yet
        np.maximum(self._em, 1e-30, out=self._w)
        np.divide(self._er, self._w, out=self.trust)
        np.subtract(1.0, self.trust, out=self.trust)
        np.clip(self.trust, 0.0, 1.0, out=self.trust)
        np.less_equal(self._em, 0.0, out=self._quiet)
        np.copyto(self.trust, 1.0, where=self._quiet)

    def _repair_bands(self, blocks: np.ndarray, trusted: np.ndarray | None,
                      mix: np.ndarray) -> None:
        """The block's residual, per bin, to the untrusted stems by their (Hann-windowed)
        magnitude there, through the trust. The FFT is the block's own (circular): what a
        filter would spill past the block's ends wraps into it, so nothing already played
        is needed and nothing is left over. Where trust is 1 the sum is restored exactly."""
        b = self.block
        self._residual(blocks, mix, 0, b)
        np.copyto(self._x, self._res)
        np.fft.rfft(self._x, axis=-1, out=self._z)
        self._tot.fill(0.0)
        u = 0
        for s in range(self.n_stems):
            if trusted is not None and trusted[s]:
                continue
            u += 1
            np.multiply(blocks[s], self._win, out=self._x)
            np.fft.rfft(self._x, axis=-1, out=self._zs)
            np.abs(self._zs, out=self._abs)
            np.copyto(self._mag[s], self._abs[0])
            for c in range(1, self.channels):
                self._mag[s] += self._abs[c]
            self._tot += self._mag[s]
        if u == 0:
            return
        np.less_equal(self._tot, SILENT, out=self._quiet)
        np.maximum(self._tot, SILENT, out=self._tot)
        for s in range(self.n_stems):
            if trusted is not None and trusted[s]:
                continue
            np.divide(self._mag[s], self._tot, out=self._w)
            np.copyto(self._w, 1.0 / u, where=self._quiet)
            self._w *= self.trust
            np.multiply(self._z, self._w, out=self._zs)
            np.fft.irfft(self._zs, b, axis=-1, out=self._x)
            blocks[s] += self._x

    def _residual(self, blocks: np.ndarray, mix: np.ndarray, lo: int, hi: int) -> None:
        n = hi - lo
        res = self._res[:, :n]
        np.copyto(res, mix[:, lo:hi])
        for s in range(self.n_stems):
            res -= blocks[s, :, lo:hi]


# ---- per-band repair over a whole take (archival) -------------------------------------



def frame_len(rate: int) -> int:
    """The STFT frame: the power of two nearest FRAME_S."""
    return 1 << max(5, round(np.log2(FRAME_S * rate)))


def _stft(x: np.ndarray, nfft: int) -> np.ndarray:
    """[..., n] -> [..., frames, nfft // 2 + 1]: periodic Hann, hop nfft / 4, padded by
    nfft on both sides so every sample is covered by four whole frames."""
    hop = nfft // 4
    n = x.shape[-1]
    total = nfft + -(-n // hop) * hop + nfft
    xp = np.zeros((*x.shape[:-1], total), np.float64)
    xp[..., nfft:nfft + n] = x
    fr = np.lib.stride_tricks.sliding_window_view(xp, nfft, axis=-1)[..., ::hop, :]
    return np.fft.rfft(fr * _hann(nfft), axis=-1)


def _istft(z: np.ndarray, nfft: int, n: int) -> np.ndarray:
    """The inverse of _stft (weighted overlap-add; exact for an unmodified spectrum)."""
    hop = nfft // 4
    fr = np.fft.irfft(z, nfft, axis=-1) * _hann(nfft)
    t = fr.shape[-2]
    out = np.zeros((*fr.shape[:-2], (t + 3) * hop), np.float64)
    for j in range(4):
        out[..., j * hop:j * hop + t * hop] += fr[..., j * hop:(j + 1) * hop].reshape(
            *fr.shape[:-2], t * hop)
    return out[..., nfft:nfft + n] / 1.5  # sum of Hann^2 at hop nfft / 4


def _hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def band_trust(stems: np.ndarray, mix: np.ndarray, ok: np.ndarray, nfft: int) -> np.ndarray:
    """Per bin, how far the stems add up to the mixture, from the samples where `ok`
    (blocks that arrived whole and do not depend on concealed input): 1 - residual
    energy / mixture energy, clipped to [0, 1]; 1 where nothing was observed.
    stems [S, C, n], mix [C, n], ok [n] bool -> [nfft // 2 + 1]. Memory is bounded:
    the take is read CHUNK_FRAMES frames at a time."""
    er = np.zeros(nfft // 2 + 1)
    em = np.zeros(nfft // 2 + 1)
    step = CHUNK_FRAMES * nfft // 4
    for a in range(0, mix.shape[-1], step):
        m = ok[a:a + step]
        if not m.any():
            continue
        res = (mix[:, a:a + step] - stems[:, :, a:a + step].sum(axis=0)) * m
        er += np.sum(np.abs(_stft(res, nfft)) ** 2, axis=(0, 1))
        em += np.sum(np.abs(_stft(mix[:, a:a + step] * m, nfft)) ** 2, axis=(0, 1))
    trust = np.ones(nfft // 2 + 1)
    seen = em > 0
    trust[seen] = np.clip(1.0 - er[seen] / em[seen], 0.0, 1.0)
    return trust


def band_repair(stems: np.ndarray, mix: np.ndarray, own: np.ndarray, shared: np.ndarray,
                trust: np.ndarray, nfft: int) -> None:
    """Repair stems [S, C, n] in place, per frequency bin, weighted by `trust`:
    - own [S, C, n]: residual already assigned to a stem (a lost stem block whose
      siblings arrived: all of mixture - the others is its own), added through `trust`;
    - then the residual mix - sum(stems) where `shared` [n] (blocks whose stems all
      depend on concealed input, or were all lost) is split among the stems by their
      magnitude in each bin (averaged over SHARE_SMOOTH frames each side: the mask the
      model would have applied), also through `trust`.
    Where trust is 1 the stems then add up to the mixture exactly in the shared samples.
    Only the stretches around repaired samples are transformed (each with the reach of
    its frames and of the smoothing), so a long take costs what its holes cost."""
    need = shared | np.any(own != 0, axis=(0, 1))
    reach = nfft + (SHARE_SMOOTH + 1) * nfft // 4
    for a, z in _stretches(need, reach):
        _band_repair(stems[:, :, a:z], mix[:, a:z], own[:, :, a:z], shared[a:z], trust, nfft)


def _stretches(need: np.ndarray, reach: int) -> list[tuple[int, int]]:
    """[a, z) stretches covering every True sample of `need` with `reach` either side,
    merged where they overlap."""
    idx = np.flatnonzero(need)
    if idx.size == 0:
        return []
    brk = np.flatnonzero(np.diff(idx) > 2 * reach)
    starts = np.concatenate(([idx[0]], idx[brk + 1]))
    ends = np.concatenate((idx[brk], [idx[-1]]))
    n = need.size
    return [(max(0, int(s) - reach), min(n, int(e) + 1 + reach))
            for s, e in zip(starts, ends, strict=True)]


def _band_repair(stems: np.ndarray, mix: np.ndarray, own: np.ndarray, shared: np.ndarray,
                 trust: np.ndarray, nfft: int) -> None:
    n = stems.shape[-1]
    if np.any(own):
        stems += _istft(_stft(own, nfft) * trust, nfft, n).astype(stems.dtype)
    if not np.any(shared):
        return
    res = (mix - stems.sum(axis=0)) * shared
    z = _stft(res, nfft) * trust  # [C, T, F]
    mag = np.abs(_stft(stems, nfft)).sum(axis=1)  # [S, T, F], channels together
    if SHARE_SMOOTH:
        k = 2 * SHARE_SMOOTH + 1
        c = np.cumsum(np.pad(mag, ((0, 0), (SHARE_SMOOTH + 1, SHARE_SMOOTH), (0, 0))), axis=1)
        mag = c[:, k:] - c[:, :-k]
    tot = mag.sum(axis=0)
    quiet = tot <= SILENT
    share = np.where(quiet, 1.0 / stems.shape[0], mag / np.where(quiet, 1.0, tot))
    stems += _istft(share[:, None] * z[None], nfft, n).astype(stems.dtype)
