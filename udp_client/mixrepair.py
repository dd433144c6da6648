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

    @property
    def enabled(self) -> bool:
        return self.observed >= MIN_BLOCKS and self.ratio <= MAX_RESIDUAL

    def observe(self, blocks: np.ndarray, mix: np.ndarray) -> None:
        """A block every stem of which arrived. The ratio is the median over the last
        WINDOW blocks (robust to a block whose input the server concealed, and to near
        silence)."""
        n = mix.shape[-1]
        em = float(np.sum(mix * mix))
        if em <= QUIET * mix.size:
            return
        self._residual(blocks, mix, 0, n)
        er = float(np.sum(self._res[:, :n] * self._res[:, :n]))
        self._ratios[self.observed % WINDOW] = er / em
        self.observed += 1
        m = min(self.observed, WINDOW)
        np.copyto(self._sorted[:m], self._ratios[:m])
        self._sorted[:m].sort()
        self.ratio = float(self._sorted[m // 2])

    def repair(self, blocks: np.ndarray, trusted: np.ndarray | None, mix: np.ndarray,
               lo: int = 0, hi: int | None = None) -> bool:
        """Share mix - sum(blocks) over samples [lo, hi) among the untrusted stems
        (trusted None: all of them), by their energy there. blocks [S, C, n], mix [C, n]."""
        if not self.enabled:
            return False
        hi = mix.shape[-1] if hi is None else hi
        if hi <= lo:
            return False
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
                blocks[s, :, lo:hi] += self._tmp[:, :n]
        self.repaired += 1
        return True

    def repair_if_off(self, blocks: np.ndarray, mix: np.ndarray) -> bool:
        """A block whose stems may not add up (the server flagged it CONCEALED: it depends
        on input it had to conceal): repaired, among all stems, only where the residual is
        far above the model's own (OFF_FACTOR times the measured ratio), i.e. only the
        samples the concealment actually changed, not the whole flagged stretch."""
        if not self.enabled:
            return False
        self._residual(blocks, mix, 0, mix.shape[-1])
        em = float(np.sum(mix * mix))
        er = float(np.sum(self._res * self._res))
        if er <= OFF_FACTOR * max(self.ratio, OFF_FLOOR) * max(em, 1e-12):
            return False
        return self.repair(blocks, None, mix)

    def _residual(self, blocks: np.ndarray, mix: np.ndarray, lo: int, hi: int) -> None:
        n = hi - lo
        res = self._res[:, :n]
        np.copyto(res, mix[:, lo:hi])
        for s in range(self.n_stems):
            res -= blocks[s, :, lo:hi]
