"""Single-producer single-consumer rings for the audio callbacks (as JACK's ringbuffer and
python-rtmixer do): preallocated, no lock; each side owns one index and only reads the
other's. The callbacks copy into or out of these and do nothing else."""

from __future__ import annotations

import numpy as np


class FrameRing:
    """Frames [n, channels] float32. `write` by the producer, `read` by the consumer."""

    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity, self.channels = capacity, channels
        self._buf = np.zeros((capacity, channels), np.float32)
        self._w = np.zeros(1, np.int64)  # frames written in all (producer's)
        self._r = np.zeros(1, np.int64)  # frames read in all (consumer's)

    def level(self) -> int:
        return int(self._w[0] - self._r[0])

    def free(self) -> int:
        return self.capacity - self.level()

    def written(self) -> int:
        """Frames written in all: the device frame index the next write starts at."""
        return int(self._w[0])

    def consumed(self) -> int:
        """Frames read in all: the device frame index the next read starts at."""
        return int(self._r[0])

    def write(self, data: np.ndarray) -> int:
        """Write all of data [n, C] or nothing; returns n or 0 (full: the caller counts)."""
        n = data.shape[0]
        w = int(self._w[0])
        if n > self.capacity - (w - int(self._r[0])):
            return 0
        i = w % self.capacity
        k = min(n, self.capacity - i)
        np.copyto(self._buf[i:i + k], data[:k])
        if k < n:
            np.copyto(self._buf[:n - k], data[k:])
        self._w[0] = w + n  # publish after the copy
        return n

    def read(self, out: np.ndarray) -> int:
        """Read up to len(out) frames into out[:m]; returns m."""
        r = int(self._r[0])
        m = min(out.shape[0], int(self._w[0]) - r)
        if m <= 0:
            return 0
        i = r % self.capacity
        k = min(m, self.capacity - i)
        np.copyto(out[:k], self._buf[i:i + k])
        if k < m:
            np.copyto(out[k:m], self._buf[:m - k])
        self._r[0] = r + m
        return m


class MetaRing:
    """Fixed-size int64 records [width], SPSC like FrameRing."""

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self._buf = np.zeros((capacity, width), np.int64)
        self._w = np.zeros(1, np.int64)
        self._r = np.zeros(1, np.int64)

    def free(self) -> bool:
        return int(self._w[0] - self._r[0]) < self.capacity

    def put(self, *values: int) -> bool:
        w = int(self._w[0])
        if w - int(self._r[0]) >= self.capacity:
            return False
        row = self._buf[w % self.capacity]
        for j, v in enumerate(values):
            row[j] = v
        self._w[0] = w + 1
        return True

    def get(self, out: np.ndarray) -> bool:
        r = int(self._r[0])
        if r >= int(self._w[0]):
            return False
        np.copyto(out, self._buf[r % self.capacity])
        self._r[0] = r + 1
        return True


class BlockRing:
    """Stem blocks handed from the network thread to the playout thread: a header
    (stem, timestamp, flags, arrival ns) and the samples [C, block], preallocated."""

    def __init__(self, capacity: int, channels: int, block: int) -> None:
        self.capacity = capacity
        self._data = np.zeros((capacity, channels, block), np.float32)
        self._head = np.zeros((capacity, 4), np.int64)
        self._w = np.zeros(1, np.int64)
        self._r = np.zeros(1, np.int64)
        self.dropped = 0  # producer side: the playout thread fell behind

    def slot(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The producer's next free slot (header, samples) to fill, or None when full."""
        w = int(self._w[0])
        if w - int(self._r[0]) >= self.capacity:
            self.dropped += 1
            return None
        i = w % self.capacity
        return self._head[i], self._data[i]

    def commit(self) -> None:
        self._w[0] += 1

    def peek(self) -> tuple[np.ndarray, np.ndarray] | None:
        r = int(self._r[0])
        if r >= int(self._w[0]):
            return None
        i = r % self.capacity
        return self._head[i], self._data[i]

    def release(self) -> None:
        self._r[0] += 1
