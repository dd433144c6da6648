"""Sequence-number arithmetic on u32 (RFC 1982 style) and a replay window."""

from __future__ import annotations

MOD = 1 << 32
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    return (a + n) % MOD


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b, in (-2^31, 2^31]."""
    d = (a - b) % MOD
    return d - MOD if d > HALF else d


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


class ReplayWindow:
    """Accepts each sequence number once, within `size` of the highest seen (as in IPsec and
    DTLS): duplicates and anything older than the window are rejected."""

    def __init__(self, size: int = 128) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.top: int | None = None
        self.bits = 0  # bit k set: top - k was seen

    def check_and_mark(self, seq: int) -> bool:
        if self.top is None:
            self.top, self.bits = seq, 1
            return True
        d = seq_diff(seq, self.top)
        if d > 0:
            self.bits = ((self.bits << d) | 1) & ((1 << self.size) - 1) if d < self.size else 1
            self.top = seq
            return True
        k = -d
        if k >= self.size or self.bits >> k & 1:
            return False
        self.bits |= 1 << k
        return True
