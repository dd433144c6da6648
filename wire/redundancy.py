"""Redundancy for media streams: XOR parity over adjacent blocks, sans-IO.

A parity datagram has its stream's type, stem, frames, channels and format, flags
REDUNDANT (| LAST when it covers the stream's final block alone), timestamp = the first
block it covers, its own sequence number, and payload = the byte-wise XOR of the payloads
of the blocks at `timestamp` and `timestamp + frames` (a lone block: a copy). It is
exactly as large as a media datagram (<= 1076 B with MAX_PAYLOAD = 1024), so nothing is
piggy-backed and nothing can outgrow 1200 B at any block size.

Two layouts (Features.REDUNDANCY grants both; one decoder reads either):

- `PAIRS`, for each stem down: blocks pair up by timestamp (ts // frames in {2p, 2p + 1});
  one parity right after the second block of each pair. +50 % datagrams and bytes.
  Any single loss among a pair's three datagrams is repaired exactly. What it cannot
  repair the client rebuilds from the mixture it sent (the stems add up to it).
- `CHAIN`, for the AUDIO up: one parity over (k - 1, k) right after every block k, so
  every block is covered twice. +100 % datagrams and bytes. It repairs every single loss
  and every double loss (except a run's first block together with its one parity), and a
  block is lost for good only with about three losses around it (~4p^3 per block at
  independent loss p, against ~2p^2 for pairs: 0.05 % instead of 0.5 % at p = 5 %).
  The uplink gets the stronger layout because an input block lost beyond repair costs
  more than a stem block: the server conceals it before the model sees it, and the wrong
  masks of every window whose frames reach it spread the error over ~100 ms of both stems
  where they still add up to the true mixture, so the client can neither see nor repair
  it (measured: docs/BENCHMARKS.md, "Loss and concealment").

Delay: a lost block whose predecessor arrived is repaired by the parity right behind it
(~0, both layouts); otherwise one block interval later (5.8 ms at 256 frames, 2.9 ms at
128), plus the network: the server's input reorder window (10 ms) and the client's
playout buffer cover it.

The receiver's `RedundancyDecoder` is a peeling decoder over both layouts: any parity with
exactly one of its blocks missing yields that block, which may complete the next parity.
It works with any arrival order, duplicates and sequence numbers crossing 2^32 (it keys on
timestamps).
"""

from __future__ import annotations

import enum
from dataclasses import replace

import numpy as np

from stemlink.wire.constants import Flags
from stemlink.wire.packets import Header

WINDOW_BLOCKS = 128  # blocks (and parities) a decoder remembers (128 x 256 frames = 743 ms)


class Layout(enum.IntEnum):
    """Which adjacent pairs get a parity: value = the stride between parities."""
    CHAIN = 1  # (k - 1, k) for every k: every block covered twice, +100 %
    PAIRS = 2  # (2p, 2p + 1): every block covered once, +50 %


UPLINK = Layout.CHAIN  # AUDIO, client to server
DOWNLINK = Layout.PAIRS  # each stem, server to client


def datagrams_per_block(layout: Layout) -> float:
    """Media plus parity datagrams per block of a long stream."""
    return 1.0 + 1.0 / layout.value


Parity = tuple[int, bytes, int]  # (timestamp of the first block covered, payload, flags)


class RedundancyEncoder:
    """One stream's parity builder. `add(ts, payload, last)` after each media datagram
    returns the parity datagrams due now (none, one, or two at the end of a chain).
    The copy of a final block is made once per timeline, however many blocks say `last`
    (a sender flagging every block gets no more parity than any other); a timestamp
    going back starts a new timeline."""

    def __init__(self, frames: int, payload_len: int, layout: Layout = Layout.PAIRS) -> None:
        self.frames = frames
        self.layout = layout
        self._prev = np.zeros(payload_len, np.uint8)
        self._parity = np.zeros(payload_len, np.uint8)
        self._prev_ts = -1
        self._copied_end = False  # this timeline's final block was copied
        self.parities = 0

    def add(self, ts: int, payload: bytes | memoryview, last: bool = False) -> list[Parity]:
        k = ts // self.frames
        pcm = np.frombuffer(payload, np.uint8, count=self._prev.shape[0])
        out: list[Parity] = []
        if ts < self._prev_ts:  # the sender started over
            self._copied_end = False
        covers_pair = self.layout is Layout.CHAIN or k % 2 == 1
        # the block before was sent (no gap): parity over the two
        if covers_pair and self._prev_ts == ts - self.frames:
            np.bitwise_xor(self._prev, pcm, out=self._parity)
            out.append((ts - self.frames, self._parity.tobytes(), int(Flags.REDUNDANT)))
        np.copyto(self._prev, pcm)
        self._prev_ts = ts
        # the final block: a copy, so that it too is covered (twice in a chain)
        if last and not self._copied_end and (self.layout is Layout.CHAIN or k % 2 == 0):
            out.append((ts, pcm.tobytes(), int(Flags.REDUNDANT | Flags.LAST)))
        self._copied_end = self._copied_end or last
        self.parities += len(out)
        return out


class RedundancyDecoder:
    """Feed every media datagram of one stream (header, payload bytes); get back the
    blocks to deliver as (header, payload): received ones and recovered ones, each as
    soon as it is here, in any order (a timestamp-indexed jitter buffer, reorder window
    or file writer places it)."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._blocks: dict[int, tuple[Header, bytes]] = {}  # k -> received or recovered
        self._parities: dict[tuple[int, bool], tuple[Header, bytes]] = {}  # (k, lone)
        self._newest = -1  # newest block index held
        self._floor = 0  # nothing held below this block index
        self.recovered = 0
        self.parities = 0
        self.resets = 0  # the sender's timeline started over

    def feed(self, h: Header, payload: bytes | memoryview, fresh: bool = True
             ) -> list[tuple[Header, bytes]]:
        """fresh: the datagram's sequence number is newer than any before on its stream
        (the receiver knows; only such a block far behind may mean the sender started
        over: an old datagram replayed must not clear what is pending)."""
        f = self.frames
        if h.timestamp % f:
            return []
        k = h.timestamp // f
        parity = bool(h.flags & Flags.REDUNDANT)
        lone = parity and bool(h.flags & Flags.LAST)
        if k < self._newest - WINDOW_BLOCKS:
            if parity:
                return []  # far older than anything held: useless
            if not fresh:  # an old block again: the consumer counts it (late, duplicate)
                return [(h, bytes(payload))]
            self._reset()  # a new data block that far back: the sender started over
        out: list[tuple[Header, bytes]] = []
        if parity:
            if (k, lone) in self._parities:
                return []  # a duplicate
            self.parities += 1
            self._parities[(k, lone)] = (h, bytes(payload))
            todo = [(k, lone)]
        else:
            if k in self._blocks:
                return []  # a duplicate (or already recovered)
            self._blocks[k] = (h, bytes(payload))
            out.append(self._blocks[k])
            todo = [(k - 1, False), (k, False)]
        self._newest = max(self._newest, k)
        self._peel(todo, out)
        self._evict()
        return out

    # ---------------------------------------------------------------- internals
    def _peel(self, todo: list[tuple[int, bool]], out: list) -> None:
        """Solve every parity with exactly one block missing; a recovered block may
        complete its neighbours' parities in turn."""
        while todo:
            key = todo.pop()
            par = self._parities.get(key)
            if par is None:
                continue
            j, lone = key
            covered = (j,) if lone else (j, j + 1)
            missing = [c for c in covered if c not in self._blocks]
            if len(missing) != 1:
                continue
            m = missing[0]
            ph, body = par
            if lone:
                data = body
            else:
                other = self._blocks[j + 1 if m == j else j][1]
                data = np.bitwise_xor(np.frombuffer(body, np.uint8),
                                      np.frombuffer(other, np.uint8)).tobytes()
            flags = int(ph.flags) & ~int(Flags.REDUNDANT)
            if not lone:
                flags &= ~int(Flags.LAST)  # (a final block repaired from a pair loses it)
            h = replace(ph, flags=flags, timestamp=m * self.frames)
            self._blocks[m] = (h, data)
            self.recovered += 1
            self._newest = max(self._newest, m)
            out.append((h, data))
            todo += [(m - 1, False), (m, False)]

    def _evict(self) -> None:
        # amortised: forget everything WINDOW_BLOCKS behind the newest block once the
        # span held reaches a quarter more (so at most ~1.25 x WINDOW_BLOCKS blocks and
        # as many parities are held: ~350 KB for stereo s16 at 256 frames)
        if self._newest - self._floor < WINDOW_BLOCKS + WINDOW_BLOCKS // 4:
            return
        floor = self._newest - WINDOW_BLOCKS
        for k in [k for k in self._blocks if k < floor]:
            del self._blocks[k]
        for key in [key for key in self._parities if key[0] < floor]:
            del self._parities[key]
        self._floor = floor

    def _reset(self) -> None:
        self._blocks.clear()
        self._parities.clear()
        self._newest = -1
        self._floor = 0
        self.resets += 1
