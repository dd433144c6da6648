"""One session's separation stream, owned by the worker thread; sans-IO (`now` passed in).

It turns the session's input jobs (blocks in timestamp order, with holes where blocks were
lost or given up) into STEM datagrams, keeping output length and alignment exact:

- a hole shorter than the separator's memory is filled by input concealment
  (`stemlink.conceal`: the default method continues the waveform and interpolates into
  the block that ended the hole, fading to silence within 60 ms; the real block after it
  is cross-faded in) and fed through the separator, so later windows see a consistent
  past; once the concealment is silent, blocks run no inference (their frames reuse the
  newest mask: there is nothing left to separate), so a hole costs at most the few
  inferences of its first 60 ms;
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
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from stemlink.conceal import DEFAULT_METHOD, Concealer
from stemlink.udp_server.ring import InputRing
from stemlink.wire import packets as pk
from stemlink.wire.constants import HEADER_SIZE, Flags, PacketType, SampleFormat
from stemlink.wire.redundancy import DOWNLINK, RedundancyEncoder


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


class Stream:
    def __init__(self, *, session: int, key: bytes, separator: Any, ring: InputRing,
                 block: int, channels: int, fmt: SampleFormat, n_stems: int,
                 sample_rate: int, playout_s: float, redundancy: bool = False) -> None:
        self.session, self.key, self.sep, self.ring = session, key, separator, ring
        self.block, self.rate, self.n_stems = block, sample_rate, n_stems
        self.playout_s = playout_s  # math.inf: archival, every block is wanted
        self.delay = separator.delay
        self.memory = separator.memory
        self.support = separator.latency.support
        # how far past i + D an input sample i reaches the output: the frame length for
        # the STFT separator, a whole run's region for segment models (`reach`)
        self.reach = getattr(separator.latency, "reach", None) or separator.card.n_fft
        self.writer = pk.MediaWriter(block, channels, fmt)
        self.stem_seq = [0] * n_stems
        # redundancy granted: a parity datagram per stem after every pair (wire.redundancy:
        # what it cannot repair, the client rebuilds from the mixture)
        self.fec = ([RedundancyEncoder(block, self.writer.payload_len, DOWNLINK)
                     for _ in range(n_stems)] if redundancy else None)
        self.conceal = Concealer(channels, block, DEFAULT_METHOD, sample_rate)
        self._in = np.zeros((channels, block), np.float32)
        self.pos: int | None = None  # next input sample the separator expects
        # output blocks whose samples depend on concealed input: [from, until)
        self._cfrom, self._cuntil = 0, 0
        self.counters: Counter = Counter()
        # frame models (StreamingSeparator) can stop at each inference for batching
        self.batchable = hasattr(separator, "resume")

    @property
    def inferences(self) -> int:
        return self.sep.stats.inferences

    def wanted(self, due: float, now: float) -> bool:
        """Whether the output block produced with an input block due at `due` can still
        be played: the client plays up to `playout_s` after."""
        return now <= due + self.playout_s

    def handle(self, job: Job, now: float) -> list[bytes]:
        """Feed one released input block (and the hole before it, if any), running every
        inference on the separator's own backend slot: steps() with a batch of one."""
        steps = self.steps(job, now)
        try:
            while True:
                next(steps).infer_alone()
        except StopIteration as done:
            return done.value

    def steps(self, job: Job, now: float) -> Generator[Any, None, list[bytes]]:
        """handle() in steps: yields the separator each time one of its inferences is due
        (the caller stages its window, runs it, possibly in a batch with other streams'
        windows, and resumes it); returns the STEM datagrams."""
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
        nxt = self.ring.blocks[job.slot]
        while self.pos < job.timestamp:  # a short hole: conceal, block by block
            ts = self.pos
            # the hole's last block is interpolated into the block that ended it
            self.conceal.missing(self._in, after=nxt if ts + b >= job.timestamp else None)
            self._mark_concealed(ts)
            self.counters["concealed_input_blocks"] += 1
            due = job.due - (job.timestamp - ts) / self.rate
            yield from self._feed(ts, self._in, 0, job.sent_ns, due, now, out,
                                  infer=not self.conceal.silent)
        self.conceal.good(self.ring.blocks[job.slot], self._in)
        self.ring.release()
        yield from self._feed(job.timestamp, self._in, job.flags, job.sent_ns, job.due, now,
                              out)
        return out

    def _jump(self, n: int) -> None:
        """Skip a long hole in O(1); `pos` moves to the block after it (set by the caller).
        Outputs from the next block on still reach back into the hole (silence): mark them
        as _mark_concealed would for the hole's last block."""
        self.sep.advance(max(n, self.memory))
        self.conceal.reset()
        self._cfrom = 0
        self._cuntil = self.pos + n + self.delay + self.reach - 1

    def _mark_concealed(self, ts: int) -> None:
        # Output sample i comes from frames whose synthesis support holds i - D; each such
        # frame analyses the n_fft (`reach`) input samples before its end, which lies in
        # (i - D, i - D + support]. So input [ts, ts + b) reaches outputs
        # (ts + D - support, ts + b + D + reach - 1).
        lo = ts + self.delay - self.support + 1
        hi = ts + self.block + self.delay + self.reach - 1
        if lo > self._cuntil:
            self._cfrom = lo
        self._cuntil = max(self._cuntil, hi)

    def _feed(self, ts: int, block: np.ndarray, flags: int, sent_ns: int, due: float,
              now: float, out: list[bytes], infer: bool = True) -> Generator[Any, None, None]:
        self.pos = ts + self.block
        if not self.wanted(due, now):
            self.sep.skip(block)
            self.counters["stale_blocks"] += 1
            return
        sep = self.sep
        if not infer:
            y = sep.skip(block)
        elif self.batchable:  # stop at each inference: the worker may batch it with others
            sep.begin(block)
            while not sep.run():
                yield sep
            y = sep.result()
        else:  # segment models run their own inferences (engine/streaming_chunked.py)
            y = sep.process(block)
        if self._cfrom < ts + self.block and ts < self._cuntil:
            flags |= Flags.CONCEALED
            self.counters["concealed_blocks"] += 1
        for k in range(self.n_stems):
            d = self.writer.write(
                PacketType.STEM, y[k], session=self.session, seq=self.stem_seq[k],
                timestamp=ts, send_time=sent_ns, key=self.key, stem=k, flags=flags)
            out.append(d)
            self.stem_seq[k] = (self.stem_seq[k] + 1) & 0xFFFFFFFF
            if self.fec is not None:
                self._parity(k, d, ts, flags, sent_ns, out)
        self.counters["stem_packets"] += self.n_stems

    def _parity(self, k: int, d: bytes, ts: int, flags: int, sent_ns: int,
                out: list[bytes]) -> None:
        w = self.writer
        for pts, body, pflags in self.fec[k].add(
                ts, memoryview(d)[HEADER_SIZE:HEADER_SIZE + w.payload_len],
                bool(flags & Flags.LAST)):
            out.append(pk.encode(pk.Header(PacketType.STEM, pflags | (flags & Flags.CONCEALED),
                                           self.session, self.stem_seq[k], pts, sent_ns,
                                           w.frames, w.channels, w.format, k), body,
                                 self.key))
            self.stem_seq[k] = (self.stem_seq[k] + 1) & 0xFFFFFFFF
            self.counters["parity_packets"] += 1

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
