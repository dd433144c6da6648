"""The one piece of memory a session's loop side and its worker side share: a preallocated
single-producer/single-consumer ring of input blocks.

The event loop writes a block into the slot at `written`, then hands the worker a job
naming that slot; the worker reads it and then advances `read`. Each index has one writer
thread, so `written - read` is a race-free fill level. Its capacity is the session's bound
on pending work, in audio time: a block that finds the ring full is dropped (counted as
overload) and becomes a gap for the worker to conceal.
"""

from __future__ import annotations

import math

import numpy as np


class InputRing:
    def __init__(self, channels: int, block: int, seconds: float, sample_rate: int) -> None:
        self.capacity = max(4, math.ceil(seconds * sample_rate / block))
        self.seconds = self.capacity * block / sample_rate
        self.blocks = np.zeros((self.capacity, channels, block), np.float32)
        self.written = 0  # loop thread only
        self.read = 0  # worker thread only

    def free(self) -> int:
        return self.capacity - (self.written - self.read)

    def claim(self) -> int:
        """Loop side: the slot for the next block (call only when free() > 0)."""
        return self.written % self.capacity

    def commit(self) -> None:
        self.written += 1

    def release(self) -> None:
        """Worker side: done with the oldest slot."""
        self.read += 1
