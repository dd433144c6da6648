"""The separation worker thread: thin glue around the Scheduler and each session's Stream.

What crosses threads, and only this: the loop puts messages (OpenStream, a Job, or
CloseStream) on one queue; the worker hands back, through `report`, values only —
Output(session, datagrams) after each job, Failed(session, message) when processing a
session raised, Released(session, counters) when it let a stream go. Every Stream, its
separator and STEM encoder are touched by this thread alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from stemlink.udp_server.scheduler import Scheduler
from stemlink.udp_server.stream import Job, Stream

log = logging.getLogger("stemlink.server")


@dataclass(frozen=True, slots=True)
class OpenStream:
    stream: Stream


@dataclass(frozen=True, slots=True)
class CloseStream:
    session: int


@dataclass(frozen=True, slots=True)
class Output:
    session: int
    datagrams: list[bytes]


@dataclass(frozen=True, slots=True)
class Failed:
    session: int
    message: str
    counters: dict


@dataclass(frozen=True, slots=True)
class Released:
    session: int
    counters: dict


Message = OpenStream | CloseStream | Job
Report = Output | Failed | Released


class Worker:
    def __init__(self, report: Callable[[Report], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.report = report
        self.clock = clock
        self.queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self.scheduler = Scheduler()
        self.compute_ns: list[int] = []  # per processed job, for benchmarks
        self.busy_ns = 0  # time spent processing, for utilisation
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="stemlink-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, messages: list[Message]) -> None:
        for m in messages:
            self.queue.put(m)

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish and wait; True when it has (so its buffers are free)."""
        self.queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            if not self._take(block=self.scheduler.pending() == 0):
                return
            picked = self.scheduler.pop(self.clock())
            if picked is not None:
                self._process(*picked)

    def _take(self, block: bool) -> bool:
        """Move what the loop sent into the scheduler; False when told to stop."""
        try:
            m = self.queue.get() if block else self.queue.get_nowait()
        except queue.Empty:
            return True
        while True:
            if m is None:
                for sid in list(self.scheduler.streams):
                    self._release(sid)
                return False
            self.handle_message(m)
            try:
                m = self.queue.get_nowait()
            except queue.Empty:
                return True

    def handle_message(self, m: Message) -> None:
        if isinstance(m, Job):
            self.scheduler.submit(m)
        elif isinstance(m, OpenStream):
            self.scheduler.open(m.stream)
        elif isinstance(m, CloseStream):
            self._release(m.session)

    def _release(self, sid: int) -> None:
        st = self.scheduler.close(sid)
        if st is not None:
            self.report(Released(sid, st.snapshot()))

    def _process(self, st: Stream, job: Job) -> None:
        t = time.perf_counter_ns()
        try:
            datagrams = st.handle(job, self.clock())
        except Exception as e:  # a bug must not kill the server: end this session only
            self.errors += 1
            log.exception("worker failed on session %08x; closing it", st.session)
            self.scheduler.close(st.session)
            self.report(Failed(st.session, f"server error while separating: "
                                           f"{type(e).__name__}", st.snapshot()))
            return
        dt = time.perf_counter_ns() - t
        self.busy_ns += dt
        if len(self.compute_ns) < 1_000_000:
            self.compute_ns.append(dt)
        if datagrams:
            self.report(Output(st.session, datagrams))
