"""The server's input reorder window, sans-IO: AUDIO blocks in (any order), blocks out in
timestamp order, each missing block waited for at most `wait_s` before it is given up.

Delay it adds: none while blocks arrive in order. When one is missing, the blocks behind it
are held until it arrives or `wait_s` has passed since the first of them arrived, so a
loss costs at most `wait_s` of extra delay on the blocks that follow it; that bound is
stated to clients (ACCEPT reorder_ms) as part of the latency budget.

Owned by the event loop. A held block keeps its datagram (`packet`) until it is released;
only released blocks are decoded into the worker's ring, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Released:
    timestamp: int  # first sample of the block
    flags: int
    sent_ns: int  # client's send time, echoed on STEM packets
    arrival: float  # server clock when it arrived
    packet: Any = None  # the caller's (header, datagram), decoded on release
    restart: bool = False  # first block after the sender started its timeline over


class ReorderBuffer:
    """Releases blocks in timestamp order. `next_ts` is the first sample not yet released
    (or given up); blocks older than it are late. A block further ahead than `horizon`
    samples is a jump, not a reordering: everything held is released at once and the
    stream goes on from the new block (the worker turns the hole into a gap)."""

    def __init__(self, block: int, wait_s: float, horizon_blocks: int) -> None:
        if horizon_blocks < 1:
            raise ValueError("horizon_blocks must be >= 1")
        self.block, self.wait_s, self.horizon = block, wait_s, horizon_blocks * block
        self.next_ts: int | None = None  # None until the first block
        self._held: dict[int, Released] = {}
        self._since: float | None = None  # arrival of the oldest held block
        self.gaps = 0  # holes given up on (their blocks are concealed downstream)

    @property
    def held(self) -> int:
        return len(self._held)

    def deadline(self) -> float | None:
        """When the oldest held block stops waiting for the hole before it, or None."""
        return None if self._since is None else self._since + self.wait_s

    def push(self, r: Released, now: float) -> tuple[list[Released], str]:
        """Offer a block. Returns (blocks released in order, verdict): verdict is "" when
        the block was taken, "late" when it is older than what was already released, or
        "duplicate"."""
        out: list[Released] = []
        ts = r.timestamp
        if self.next_ts is None:
            self.next_ts = ts
        if ts < self.next_ts:
            return out, "late"
        if ts in self._held:
            return out, "duplicate"
        if ts - self.next_ts >= self.horizon:  # a jump: stop waiting, start over there
            out.extend(self._drain_all())
            self.next_ts = ts
            self.gaps += 1
        self._held[ts] = r
        self._release_ready(out)
        self.poll(now, out)
        return out, ""

    def poll(self, now: float, out: list[Released] | None = None) -> list[Released]:
        """Give up on holes whose wait is over; returns (or extends `out` with) what that
        releases. A hole waits `wait_s` from the arrival of the oldest block behind it."""
        out = [] if out is None else out
        while self._since is not None and now >= self._since + self.wait_s:
            self.gaps += 1
            self.next_ts = min(self._held)  # the hole [next_ts, oldest held) is given up
            self._release_ready(out)
        return out

    def _release_ready(self, out: list[Released]) -> None:
        while self.next_ts in self._held:
            r = self._held.pop(self.next_ts)
            out.append(r)
            self.next_ts += self.block
        # what is still held waits for a hole: since the oldest of it arrived
        self._since = min(v.arrival for v in self._held.values()) if self._held else None

    def _drain_all(self) -> list[Released]:
        out = [self._held[k] for k in sorted(self._held)]
        self._held.clear()
        self._since = None
        return out

    def restart(self, ts: int) -> list[Released]:
        """Resynchronise at `ts` (the sender jumped back): release what is held, in order."""
        out = self._drain_all()
        self.next_ts = ts
        return out
