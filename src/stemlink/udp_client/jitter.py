"""Sequence-indexed playout (jitter) buffer, sans-IO and preallocated.

Blocks are placed by media timestamp into a ring of `capacity` slots. Playout starts
`target` blocks after the first block arrives and then advances one sample per sample
popped, whatever arrives: a missing block is concealed (the last block repeated with a
fade, then silence) and counted; a block arriving after its playout point is late and
dropped. Added delay: target * block samples, fixed (stated in `delay_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class JitterStats:
    pushed: int = 0
    late: int = 0  # arrived after their playout point
    duplicates: int = 0
    too_early: int = 0  # beyond the ring: the sender runs ahead of playout
    concealed: int = 0  # blocks played from concealment
    prefill: int = 0  # samples of silence played before playout started


class JitterBuffer:
    def __init__(self, channels: int, block: int, target: int = 4, capacity: int = 64) -> None:
        if not 0 < target < capacity:
            raise ValueError("need 0 < target < capacity")
        self.channels, self.block, self.target, self.capacity = channels, block, target, capacity
        self._ring = np.zeros((capacity, channels, block), np.float32)
        self._ts = np.full(capacity, -1, np.int64)  # timestamp held by each slot, -1 = none
        self._last = np.zeros((channels, block), np.float32)  # last block played
        self._fade = np.linspace(1.0, 0.0, block, dtype=np.float32)
        self._conceal_run = 0
        self.play = None  # media timestamp of the next sample to play
        self.stats = JitterStats()

    @property
    def delay_samples(self) -> int:
        return self.target * self.block

    def push(self, ts: int, block: np.ndarray) -> bool:
        if ts % self.block:
            return False
        if self.play is None:
            self.play = ts - self.target * self.block
        if ts + self.block <= self.play:
            self.stats.late += 1
            return False
        if ts >= self.play + self.capacity * self.block:
            self.stats.too_early += 1
            return False
        slot = (ts // self.block) % self.capacity
        if self._ts[slot] == ts:
            self.stats.duplicates += 1
            return False
        self._ts[slot] = ts
        np.copyto(self._ring[slot], block)
        self.stats.pushed += 1
        return True

    def pop(self, out: np.ndarray) -> None:
        """Fill out [channels, n] with the next n samples of playout."""
        n = out.shape[1]
        if self.play is None:
            out[...] = 0.0
            self.stats.prefill += n
            return
        done = 0
        while done < n:
            start = self.play - self.play % self.block
            off = self.play - start
            k = min(self.block - off, n - done)
            if start < 0:
                out[:, done:done + k] = 0.0
                self.stats.prefill += k
            else:
                slot = (start // self.block) % self.capacity
                if self._ts[slot] == start:
                    src = self._ring[slot]
                    if off == 0:
                        np.copyto(self._last, src)
                        self._conceal_run = 0
                else:
                    src = self._conceal(off)
                out[:, done:done + k] = src[:, off:off + k]
                if off + k == self.block:
                    self._ts[slot] = -1
            self.play += k
            done += k

    def _conceal(self, off: int) -> np.ndarray:
        if off == 0:  # once per missing block: repeat the last one, fading, then silence
            self.stats.concealed += 1
            self._conceal_run += 1
            if self._conceal_run == 1:
                self._last *= self._fade
            else:
                self._last[...] = 0.0
        return self._last
