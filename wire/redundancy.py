"""Redundancy for media streams: XOR parity over pairs of blocks, sans-IO.

Scheme (Features.REDUNDANCY, both directions, per stream: AUDIO up, each stem down):
blocks pair up by timestamp, pair p = the blocks with ts // frames in {2p, 2p + 1}. Right
after the second block of a pair (or after a lone first block flagged LAST) the sender
sends one parity datagram: same type, stem, frames, channels and format, flags
REDUNDANT (| LAST when it covers a lone block), timestamp = the pair's first block, its own
sequence number, payload = byte-wise XOR of the two payloads (a lone block: a copy).

- Recovers any single loss among the three datagrams exactly (bit for bit), at every
  block size: a parity datagram is exactly as large as a media datagram (<= 1076 B with
  MAX_PAYLOAD = 1024), so nothing is piggy-backed and nothing can outgrow 1200 B.
- Overhead: one datagram per two blocks, +50 % bytes and packets per stream.
- Delay: a lost second block is repaired by the parity right behind it (~0); a lost first
  block one block interval after it was due (5.8 ms at 256 frames, 2.9 ms at 128), plus
  the network. A receiver that consumes in order (the server's input) waits, only while a
  block is missing, until the parity comes or a block of the pair after next arrives (at
  most `max_hold`, 20 ms).

The receiver's `RedundancyDecoder` works with any arrival order, duplicates and
sequence numbers crossing 2^32 (it keys on timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stemlink.wire.constants import Flags
from stemlink.wire.packets import Header

WINDOW_PAIRS = 64  # pairs remembered by a decoder (64 x 2 x 256 frames = 743 ms)


class RedundancyEncoder:
    """One stream's parity builder. `add(ts, payload, last)` after each media datagram;
    it returns (pair timestamp, parity payload, flags) when a parity datagram is due."""

    def __init__(self, frames: int, payload_len: int) -> None:
        self.frames = frames
        self._first = np.zeros(payload_len, np.uint8)
        self._parity = np.zeros(payload_len, np.uint8)
        self._first_ts = -1
        self.parities = 0

    def add(self, ts: int, payload: bytes | memoryview, last: bool = False
            ) -> tuple[int, bytes, int] | None:
        k = ts // self.frames
        pcm = np.frombuffer(payload, np.uint8, count=self._first.shape[0])
        if k % 2 == 0:
            np.copyto(self._first, pcm)
            self._first_ts = ts
            if last:  # a lone first block: its parity is a copy
                self.parities += 1
                return ts, self._first.tobytes(), int(Flags.REDUNDANT | Flags.LAST)
            return None
        if self._first_ts != ts - self.frames:  # the first block was never sent (a gap)
            return None
        np.bitwise_xor(self._first, pcm, out=self._parity)
        self._first_ts = -1
        self.parities += 1
        return ts - self.frames, self._parity.tobytes(), int(Flags.REDUNDANT)


@dataclass
class _Pair:
    data: list  # [payload | None, payload | None]
    headers: list  # [Header | None, Header | None]
    parity: bytes | None = None
    parity_header: Header | None = None
    lone: bool = False  # parity covers the first block alone (stream ended there)
    done: list | None = None  # [delivered first, delivered second]


class RedundancyDecoder:
    """Feed every media datagram of one stream (header, payload bytes); get back the
    blocks to deliver as (header, payload): received ones and recovered ones.

    ordered=False: each block is returned as soon as it is received or recovered (a
    timestamp-indexed jitter buffer or file writer places it).
    ordered=True: blocks come out in timestamp order, gaps skipped only when they can no
    longer be repaired (something from the next pair arrived, or `max_hold` seconds
    passed): for a receiver that consumes in order, like the server's input."""

    def __init__(self, frames: int, ordered: bool = False, max_hold: float = 0.020) -> None:
        self.frames = frames
        self.ordered = ordered
        self.max_hold = max_hold
        self._pairs: dict[int, _Pair] = {}
        self._next: int | None = None  # ordered: next timestamp to deliver
        self._newest = -1
        self._held_since: float | None = None
        self.recovered = 0
        self.parities = 0
        self.skipped = 0  # ordered: blocks given up on (the consumer conceals them)

    def feed(self, h: Header, payload: bytes | memoryview, now: float = 0.0
             ) -> list[tuple[Header, bytes]]:
        f = self.frames
        if h.timestamp % f:
            return []
        pi = h.timestamp // f // 2
        slot = (h.timestamp // f) % 2
        pair = self._pairs.get(pi)
        if pair is not None and not h.flags & Flags.REDUNDANT and (
                pair.data[slot] is not None or pair.done[slot]):
            return []  # a duplicate
        if self.ordered and self._next is not None:
            if h.flags & Flags.REDUNDANT:
                if (pi + 1) * 2 * f <= self._next:
                    return []  # its pair has passed
            elif h.timestamp < self._next:
                # given up on already: a late block goes to the consumer, which counts it
                return [(h, bytes(payload))]
        if pair is None:
            pair = self._pairs[pi] = _Pair([None, None], [None, None], done=[False, False])
            self._evict(pi)
        out: list[tuple[Header, bytes]] = []
        if h.flags & Flags.REDUNDANT:
            if pair.parity is None:
                self.parities += 1
                pair.parity, pair.parity_header = bytes(payload), h
                pair.lone = bool(h.flags & Flags.LAST)
        else:
            pair.data[slot], pair.headers[slot] = bytes(payload), h
            self._newest = max(self._newest, h.timestamp)
            if not self.ordered:
                pair.done[slot] = True
                out.append((h, pair.data[slot]))
        if self._next is None:
            self._next = pi * 2 * f
        self._repair(pi, pair, out)
        if self.ordered:
            self._release(out, now)
        return out

    def poll(self, now: float) -> list[tuple[Header, bytes]]:
        """Ordered mode: give up on a block held past max_hold (call from a timer)."""
        out: list[tuple[Header, bytes]] = []
        if self.ordered:
            self._release(out, now)
        return out

    # ---------------------------------------------------------------- internals
    def _repair(self, pi: int, pair: _Pair, out: list) -> None:
        if pair.parity is None:
            return
        have = [d is not None or done for d, done in zip(pair.data, pair.done, strict=True)]
        if pair.lone:
            missing = [0] if not have[0] else []
        else:
            missing = [i for i in (0, 1) if not have[i]]
        if len(missing) != 1:
            return
        m = missing[0]
        if pair.lone:
            data = pair.parity
        else:
            other = pair.data[1 - m]
            if other is None:  # delivered and forgotten: cannot happen (kept until evicted)
                return
            a = np.frombuffer(pair.parity, np.uint8)
            b = np.frombuffer(other, np.uint8)
            data = np.bitwise_xor(a, b).tobytes()
        ph = pair.parity_header
        flags = int(ph.flags) & ~int(Flags.REDUNDANT)
        if pair.lone:
            flags |= int(Flags.LAST)
        else:
            flags &= ~int(Flags.LAST)
            other_h = pair.headers[1 - m]
            if m == 1 and other_h is not None and other_h.flags & Flags.LAST:
                flags |= int(Flags.LAST)
        h = replace(ph, flags=flags, timestamp=(2 * pi + m) * self.frames)
        pair.data[m], pair.headers[m] = data, h
        self.recovered += 1
        self._newest = max(self._newest, h.timestamp)
        if not self.ordered:
            pair.done[m] = True
            out.append((h, data))

    def _release(self, out: list, now: float) -> None:
        f = self.frames
        while self._next is not None:
            k = self._next // f
            pair = self._pairs.get(k // 2)
            slot = k % 2
            if pair is not None and pair.data[slot] is not None and not pair.done[slot]:
                pair.done[slot] = True
                out.append((pair.headers[slot], pair.data[slot]))
                self._next += f
                self._held_since = None
                continue
            if self._newest < self._next:  # nothing beyond: all caught up
                self._held_since = None
                return
            # self._next is missing and something later is held: wait for its parity
            # until a block of the pair after next arrives (the parity was sent two blocks
            # before it: swaps and a loss next to it are tolerated), or max_hold passes
            if self._held_since is None:
                self._held_since = now
            next_pair_start = (k // 2 + 1) * 2 * f
            if self._newest >= next_pair_start + 2 * f or now - self._held_since >= self.max_hold:
                self.skipped += 1
                self._next += f
                self._held_since = None
                continue
            return

    def _evict(self, newest_pair: int) -> None:
        if len(self._pairs) <= WINDOW_PAIRS:
            return
        for p in sorted(self._pairs):
            if len(self._pairs) <= WINDOW_PAIRS or p >= newest_pair:
                break
            del self._pairs[p]
            if self._next is not None and self._next < (p + 1) * 2 * self.frames:
                self._next = (p + 1) * 2 * self.frames  # fell out of the window
