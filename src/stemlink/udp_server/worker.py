"""The separation worker: runs off the event loop, one job (input block) at a time.

Each session's separator is touched only here. Gaps in a session's timeline (blocks lost
on the network or dropped under overload) are concealed with silence before they enter
the STFT, so output length and alignment never change; their STEM blocks carry the
CONCEALED flag.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from stemlink.udp_server.core import Addr, Job, Session
from stemlink.wire.constants import Flags, PacketType

log = logging.getLogger("stemlink.server")
Send = Callable[[list[bytes], Addr], None]


class Worker:
    def __init__(self, send: Send, n_stems: int) -> None:
        self.send = send
        self.n_stems = n_stems
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.compute_ns: list[int] = []  # per processed block, for benchmarks
        self._thread = threading.Thread(target=self._run, name="stemlink-worker", daemon=True)
        self.errors = 0
        # metrics (issue 10): cumulative busy time; `observe` gets each block's seconds
        self.busy_ns = 0
        self.observe: Callable[[float], None] | None = None

    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        for j in jobs:
            self.queue.put(j)

    def stop(self, timeout: float = 5.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            s = job.session
            s.taken += 1
            if s.closed:
                continue
            try:
                t = time.perf_counter_ns()
                self._process(s, job)
                dt = time.perf_counter_ns() - t
                if len(self.compute_ns) < 1_000_000:
                    self.compute_ns.append(dt)
                self.busy_ns += dt  # metrics (issue 10)
                if self.observe is not None:
                    self.observe(dt / 1e9)
            except Exception:  # a bug must not kill the server: end this session's stream
                self.errors += 1
                log.exception("worker failed on session %08x; its stream stops", s.id)
                s.ring = None

    def _process(self, s: Session, job: Job) -> None:
        # local references: close() on the loop thread may drop the session's at any time
        ring, sep = s.ring, s.setup.separator
        if ring is None or sep is None:
            return
        while s.worker_pos < job.timestamp:  # conceal missing input with silence
            self._emit(s, sep.process(s.zero_block), s.worker_pos, Flags.CONCEALED,
                       job.sent_ns)
            s.counters["concealed_blocks"] += 1
            s.worker_pos += s.block
        out = sep.process(ring[job.slot])
        self._emit(s, out, job.timestamp, job.flags, job.sent_ns)
        s.worker_pos = job.timestamp + s.block

    def _emit(self, s: Session, out: np.ndarray, ts: int, flags: int, sent_ns: int) -> None:
        datagrams = []
        for k in range(self.n_stems):
            datagrams.append(s.writer.write(
                PacketType.STEM, out[k], session=s.id, seq=s.stem_seq[k], timestamp=ts,
                send_time=sent_ns, key=s.key, stem=k, flags=flags))
            s.stem_seq[k] = (s.stem_seq[k] + 1) & 0xFFFFFFFF
        s.counters["stem_packets"] += len(datagrams)
        self.send(datagrams, s.addr)
