"""One session's separation stream, owned by the worker thread; sans-IO (`now` passed in).

It turns the session's input jobs (blocks in timestamp order, with holes where blocks were
lost or given up) into STEM datagrams, keeping output length and alignment exact:

- a hole shorter than the separator's memory is filled by input concealment (fade out
  over the first concealed block, then silence, fade back in on the next real block) and
  fed through the separator, so later windows see a consistent past; the silent blocks
  after the fade run no inference (their frames reuse the newest mask: there is nothing
  left to separate), so a hole costs at most one inference;
- a hole at least that long is jumped in O(1) (`advance`): the separator state becomes
  exactly what a silence of that length would leave, no inference, no output;
- a block whose output can no longer be played (its playout deadline has passed) is fed
  with `skip()` (an FFT per hop, no inference) and sends nothing; so a gap of any length
  costs at most the inferences whose output is still wanted;
- output blocks that depend on concealed input carry CONCEALED.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from stemlink.udp_server.ring import InputRing
from stemlink.wire import packets as pk
from stemlink.wire.constants import Flags, PacketType, SampleFormat


@dataclass(frozen=True, slots=True)
class Job:
    """One input block handed from the loop to the worker."""

    session: int
    timestamp: int  # first sample (client's media clock)
    slot: int  # InputRing slot holding it
    flags: int
    sent_ns: int  # client's send time, echoed on STEM packets
    due: float  # server clock: when the block should have arrived (earliest-deadline order)
    restart: bool = False  # the sender's timeline jumped back: start over at `timestamp`


class InputConcealer:
    """Fills missing input blocks: the last real block faded out (raised-cosine), then
    silence; the first real block after a hole fades in. Allocation-free after set-up."""

    def __init__(self, channels: int, block: int) -> None:
        t = (np.arange(block, dtype=np.float64) + 0.5) / block
        self._down = np.tile((0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32), (channels, 1))
        self._up = np.tile((0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32), (channels, 1))
        self._last = np.zeros((channels, block), np.float32)
        self._have_last = False
        self.run = 0  # concealed blocks since the last real one

    def good(self, block: np.ndarray, out: np.ndarray) -> None:
        if self.run:
            np.multiply(block, self._up, out=out)
        else:
            np.copyto(out, block)
        np.copyto(self._last, block)
        self._have_last = True
        self.run = 0

    def missing(self, out: np.ndarray) -> None:
        if self.run == 0 and self._have_last:
            np.multiply(self._last, self._down, out=out)
        else:
            out[...] = 0.0
        self.run += 1

    def reset(self) -> None:
        self._have_last = False
        self.run = 1  # the next real block fades in


class Stream:
    def __init__(self, *, session: int, key: bytes, separator: Any, ring: InputRing,
                 block: int, channels: int, fmt: SampleFormat, n_stems: int,
                 sample_rate: int, playout_s: float) -> None:
        self.session, self.key, self.sep, self.ring = session, key, separator, ring
        self.block, self.rate, self.n_stems = block, sample_rate, n_stems
        self.playout_s = playout_s  # math.inf: archival, every block is wanted
        self.delay = separator.delay
        self.memory = separator.memory
        self.support = separator.latency.support
        self.n_fft = separator.card.n_fft
        self.writer = pk.MediaWriter(block, channels, fmt)
        self.stem_seq = [0] * n_stems
        self.conceal = InputConcealer(channels, block)
        self._in = np.zeros((channels, block), np.float32)
        self.pos: int | None = None  # next input sample the separator expects
        # output blocks whose samples depend on concealed input: [from, until)
        self._cfrom, self._cuntil = 0, 0
        self.counters: Counter = Counter()

    @property
    def inferences(self) -> int:
        return self.sep.stats.inferences

    def wanted(self, timestamp: int, due: float, now: float) -> bool:
        """Whether the output block produced with input block `timestamp` can still be
        played: the block was due at `due`; the client plays up to `playout_s` after."""
        return now <= due + self.playout_s

    def handle(self, job: Job, now: float) -> list[bytes]:
        """Feed one released input block (and the hole before it, if any)."""
        out: list[bytes] = []
        b = self.block
        if self.pos is not None and job.restart:  # the sender started over: a new past
            self.pos = job.timestamp - self.memory
            self._jump(self.memory)
            self.pos = job.timestamp
            self.counters["restarts"] += 1
        if self.pos is None:
            self.pos = job.timestamp
        gap = job.timestamp - self.pos
        if gap >= self.memory:
            self._jump(gap)
            self.counters["gap_jumps"] += 1
            self.counters["gap_jumped_blocks"] += gap // b
            self.pos = job.timestamp
        while self.pos < job.timestamp:  # a short hole: conceal, block by block
            ts = self.pos
            self.conceal.missing(self._in)
            self._mark_concealed(ts)
            self.counters["concealed_input_blocks"] += 1
            due = job.due - (job.timestamp - ts) / self.rate
            self._feed(ts, self._in, 0, job.sent_ns, due, now, out,
                       infer=self.conceal.run == 1)
        self.conceal.good(self.ring.blocks[job.slot], self._in)
        self.ring.release()
        self._feed(job.timestamp, self._in, job.flags, job.sent_ns, job.due, now, out)
        return out

    def _jump(self, n: int) -> None:
        """Skip a long hole in O(1); `pos` moves to the block after it (set by the caller).
        Outputs from the next block on still reach back into the hole (silence): mark them
        as _mark_concealed would for the hole's last block."""
        self.sep.advance(max(n, self.memory))
        self.conceal.reset()
        self._cfrom = 0
        self._cuntil = self.pos + n + self.delay + self.n_fft - 1

    def _mark_concealed(self, ts: int) -> None:
        # Output sample i comes from frames whose synthesis support holds i - D; each such
        # frame analyses the n_fft input samples before its end, which lies in
        # (i - D, i - D + support]. So input [ts, ts + b) reaches outputs
        # (ts + D - support, ts + b + D + n_fft - 1).
        lo = ts + self.delay - self.support + 1
        hi = ts + self.block + self.delay + self.n_fft - 1
        if lo > self._cuntil:
            self._cfrom = lo
        self._cuntil = max(self._cuntil, hi)

    def _feed(self, ts: int, block: np.ndarray, flags: int, sent_ns: int, due: float,
              now: float, out: list[bytes], infer: bool = True) -> None:
        self.pos = ts + self.block
        if not self.wanted(ts, due, now):
            self.sep.skip(block)
            self.counters["stale_blocks"] += 1
            return
        y = self.sep.process(block) if infer else self.sep.skip(block)
        if self._cfrom < ts + self.block and ts < self._cuntil:
            flags |= Flags.CONCEALED
            self.counters["concealed_blocks"] += 1
        for k in range(self.n_stems):
            out.append(self.writer.write(
                PacketType.STEM, y[k], session=self.session, seq=self.stem_seq[k],
                timestamp=ts, send_time=sent_ns, key=self.key, stem=k, flags=flags))
            self.stem_seq[k] = (self.stem_seq[k] + 1) & 0xFFFFFFFF
        self.counters["stem_packets"] += self.n_stems

    def snapshot(self) -> dict:
        c = dict(self.counters)
        c["inferences"] = self.sep.stats.inferences
        c["skipped_inferences"] = self.sep.stats.skipped_inferences
        return c


def playout_seconds(playout_ms: int, default_ms: float) -> float:
    """The client's playout budget from HELLO: 0 = the server's default, ARCHIVAL = none."""
    if playout_ms == pk.ARCHIVAL:
        return math.inf
    return (playout_ms or default_ms) / 1000.0
