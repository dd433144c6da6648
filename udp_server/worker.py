"""The separation workers: thin glue around the Scheduler, each session's Stream and one
inference backend per worker thread.

What crosses threads, and only this: the loop puts messages (OpenStream, a Job, or
CloseStream) on a worker's queue; the worker hands back, through `report`, lists of
values only — Output(session, datagrams) after each job, Failed(session, message) when
processing a session raised, Released(session, counters) when it let a stream go — one
list per batch, so the loop is woken once per batch (one call_soon_threadsafe), not once
per block. Every Stream, its
separator and STEM encoder, and the worker's backend are touched by that worker's thread
alone; a WorkerPool pins each session to one worker for its whole life.

Batching (the sans-IO part is `Worker.step(now)`). A job is a `Stream.steps()` generator
that stops wherever one of the stream's inferences is due. The worker takes jobs in the
Scheduler's order (earliest deadline first, stale upkeep last), runs each to its next
stop, and gathers the stopped ones, one per session, up to `max_batch`; it then copies
their windows into the backend's batch buffer (slots 0..n-1), runs the model once on the
n filled slots, hands every stream its masks and lets each go on. A job that stops again
(a block that spans two inference periods, a concealed hole) is first in the next batch.
A window's masks do not depend on its batch neighbours, so output is the same, bit for
bit, at any batch size (tested). With a batching-delay budget > 0 a partial batch waits
up to that long, from when its first window stopped, for other sessions' windows; 0 runs
what is ready at once. On CPU, ONNX Runtime costs a batch of 2 about twice a batch of 1,
so the CPU default is B = 1 and no delay: what the scheduler gives there is deadline
order and fairness; on a GPU a batch of 32 costs little more than one window.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from stemlink.engine.errors import EngineError
from stemlink.udp_server.scheduler import Scheduler
from stemlink.udp_server.stream import Job, Stream

log = logging.getLogger("stemlink.server")

MAX_COMPUTE_SAMPLES = 1_000_000  # per-job compute times kept for benchmarks
# Windows per batch at most: each slot of the batch buffer costs the backend its
# activations (~26 MB per window with ONNX Runtime on CPU: 1.9 GB at 64), and 64 is
# already twice the largest default TensorRT profile.
MAX_BATCH = 64


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


@dataclass(frozen=True)
class BatchConfig:
    """Stated at start (`stemlink serve --batch`, `--batch-delay-us`)."""

    max_batch: int = 1  # B: windows per inference, at most one per session
    delay_s: float = 0.0  # how long a partial batch may wait for more windows

    def validate(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise EngineError(f"the batch must be 1..{MAX_BATCH} windows, not {self.max_batch}")
        if not 0.0 <= self.delay_s <= 0.1:
            raise EngineError("the batching delay must be 0..100000 µs")


class _Running:
    """A job stopped at an inference (or just started): its stream and generator."""

    __slots__ = ("stream", "steps", "ns", "since")

    def __init__(self, stream: Stream, steps: Generator[Any, None, list[bytes]],
                 since: float) -> None:
        self.stream, self.steps, self.ns, self.since = stream, steps, 0, since


_WARM_LOCK = threading.Lock()  # start-up only: one backend warms (captures) at a time


class Worker:
    def __init__(self, report: Callable[[list[Report]], None],
                 clock: Callable[[], float] = time.monotonic, backend: Any = None,
                 batch: BatchConfig = BatchConfig(), name: str = "stemlink-worker") -> None:
        """backend: the worker's own (its streams are bound to it on open); None: each
        stream runs on its separator's backend, one window at a time (tests)."""
        batch.validate()
        if backend is None and batch.max_batch > 1:
            raise EngineError("batching needs the worker's own backend")
        if backend is not None and batch.max_batch > getattr(backend, "batch", 1):
            raise EngineError(f"batch {batch.max_batch} is larger than the backend's "
                              f"buffer ({getattr(backend, 'batch', 1)} windows)")
        self.report = report
        self.clock = clock
        self.backend = backend
        self.batch = batch
        self._infer_n = getattr(backend, "infer_first", None)  # runs only the filled slots
        self.queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self.scheduler = Scheduler()
        self._outbox: list[Report] = []  # for the loop, handed over once per step
        self._ready: list[_Running] = []  # stopped at an inference: the next batch
        self._busy: set[int] = set()  # their sessions
        self.compute_ns: list[int] = []  # per job: its own steps + the batches it was in
        self.busy_ns = 0  # time spent processing, for utilisation
        self.observe: Callable[[float], None] | None = None  # metrics: seconds per job
        self.errors = 0
        self.batches = 0  # inferences run, and the windows they carried
        self.batched_windows = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._warm = threading.Event()

    def start(self) -> None:
        """Start the thread; return once its backend is warm on it (no session yet)."""
        self._thread.start()
        self._warm.wait()

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

    # ------------------------------------------------------------------ sans-IO
    def handle_message(self, m: Message) -> None:
        self._handle(m)
        self._flush()

    def _handle(self, m: Message) -> None:
        if isinstance(m, Job):
            self.scheduler.submit(m)
        elif isinstance(m, OpenStream):
            if self.backend is not None and hasattr(m.stream.sep, "bind"):
                m.stream.sep.bind(self.backend, 0)  # this thread's backend from now on
            self.scheduler.open(m.stream)
        elif isinstance(m, CloseStream):
            self._release(m.session)

    def wait_time(self, now: float) -> float | None:
        """How long the thread may sleep for messages: None = until one comes (no work),
        0 = not at all; > 0 = a partial batch is waiting out its batching delay."""
        if self._ready and self._full_or_due(now):
            return 0.0
        if len(self._ready) < self.batch.max_batch and self.scheduler.has_job(self._busy):
            return 0.0
        if self._ready:
            return max(0.0, self._ready[0].since + self.batch.delay_s - now)
        return None

    def step(self, now: float) -> bool:
        """Gather a batch and run it: False when there was nothing to do."""
        worked = self._gather(now)
        if self._ready and self._full_or_due(now):
            self._run_batch()
            worked = True
        self._flush()
        return worked

    def _flush(self) -> None:
        if self._outbox:
            out, self._outbox = self._outbox, []
            self.report(out)

    def stream(self, session: int) -> Stream | None:
        return self.scheduler.streams.get(session)

    # ------------------------------------------------------------------ batching
    def _full_or_due(self, now: float) -> bool:
        return (len(self._ready) >= self.batch.max_batch
                or now >= self._ready[0].since + self.batch.delay_s)

    def _gather(self, now: float) -> bool:
        """Start jobs in deadline order until the batch is full or none is left."""
        worked = False
        while len(self._ready) < self.batch.max_batch:
            picked = self.scheduler.pop(now, self._busy)
            if picked is None:
                break
            worked = True
            st, job = picked
            self._advance(_Running(st, self._start(st, job, now), now))
        return worked

    def _start(self, st: Stream, job: Job, now: float):
        return st.steps(job, now)

    def _advance(self, r: _Running) -> None:
        """Run a job to its next stop: into the batch, or done (reported)."""
        t = time.perf_counter_ns()
        try:
            next(r.steps)
        except StopIteration as done:
            dt = time.perf_counter_ns() - t
            self._finished(r, r.ns + dt, done.value)
            self.busy_ns += dt
            return
        except Exception as e:  # a bug must not kill the server: end this session only
            self._fail(r.stream, e)
            return
        dt = time.perf_counter_ns() - t
        r.ns += dt
        self.busy_ns += dt
        r.since = self.clock()  # a partial batch waits from its first window's stop
        self._ready.append(r)
        self._busy.add(r.stream.session)

    def _run_batch(self) -> None:
        batch, self._ready = self._ready, []
        for r in batch:
            self._busy.discard(r.stream.session)
        t = time.perf_counter_ns()
        try:
            if self.backend is None:  # one window, on the stream's own backend slot
                (r,) = batch
                r.stream.sep.infer_alone()
            else:
                be = self.backend
                for i, r in enumerate(batch):
                    r.stream.sep.stage(be.inputs[i])
                if self._infer_n is not None:
                    self._infer_n(len(batch))
                else:  # fixed-shape engines run the whole buffer
                    be.infer()
                for i, r in enumerate(batch):  # every stream its masks before any goes
                    r.stream.sep.resume(be.outputs[i])  # on (it may run the backend again)
        except Exception as e:
            for r in batch:
                self._fail(r.stream, e)
            return
        dt = time.perf_counter_ns() - t
        self.busy_ns += dt
        self.batches += 1
        self.batched_windows += len(batch)
        for r in batch:
            r.ns += dt
            self._advance(r)

    def _finished(self, r: _Running, ns: int, datagrams: list[bytes]) -> None:
        if len(self.compute_ns) < MAX_COMPUTE_SAMPLES:
            self.compute_ns.append(ns)
        if self.observe is not None:
            self.observe(ns / 1e9)
        if datagrams:
            self._outbox.append(Output(r.stream.session, datagrams))

    def _fail(self, st: Stream, e: Exception) -> None:
        self.errors += 1
        log.error("worker failed on session %08x (%s: %s); closing it", st.session,
                  type(e).__name__, e, exc_info=e)
        self._drop(st.session)
        self.scheduler.close(st.session)
        self._outbox.append(Failed(st.session, f"server error while separating: "
                                       f"{type(e).__name__}", st.snapshot()))

    def _drop(self, sid: int) -> None:
        if sid in self._busy:
            self._busy.discard(sid)
            self._ready = [r for r in self._ready if r.stream.session != sid]

    def _release(self, sid: int) -> None:
        self._drop(sid)
        st = self.scheduler.close(sid)
        if st is not None:
            self._outbox.append(Released(sid, st.snapshot()))

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        # ONNX Runtime's CUDA EP keeps its CUDA graph per thread: warm the backend on this
        # thread before any session, one worker at a time (a graph capture fails if another
        # thread touches CUDA meanwhile; seen with --workers 4 on an H200)
        warm = getattr(self.backend, "warm_thread", None)
        try:
            if warm is not None:
                with _WARM_LOCK:
                    warm()
        finally:
            self._warm.set()
        while True:
            wait = self.wait_time(self.clock())
            if not self._take(wait):
                return
            self.step(self.clock())

    def _take(self, wait: float | None) -> bool:
        """Move what the loop sent into the scheduler; False when told to stop."""
        try:
            m = (self.queue.get_nowait() if wait == 0.0 else
                 self.queue.get(timeout=wait))
        except queue.Empty:
            return True
        while True:
            if m is None:
                for sid in list(self.scheduler.streams):
                    self._release(sid)
                self._flush()
                return False
            self.handle_message(m)
            try:
                m = self.queue.get_nowait()
            except queue.Empty:
                return True


class WorkerPool:
    """Several workers, each with its own backend and thread; a session is pinned to the
    worker that opened it (the fewest sessions at the time). Routing state is the loop's."""

    def __init__(self, workers: list[Worker]) -> None:
        if not workers:
            raise EngineError("a pool needs at least one worker")
        self.workers = workers
        self._of: dict[int, Worker] = {}
        self._count = {id(w): 0 for w in workers}

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)

    def submit(self, messages: list[Message]) -> None:
        for m in messages:
            if isinstance(m, OpenStream):
                w = min(self.workers, key=lambda w: self._count[id(w)])
                self._of[m.stream.session] = w
                self._count[id(w)] += 1
            elif isinstance(m, CloseStream):
                w = self._of.pop(m.session, None)
                if w is None:
                    continue
                self._count[id(w)] -= 1
            else:
                w = self._of.get(m.session)
                if w is None:
                    continue
            w.queue.put(m)

    def stop(self, timeout: float = 10.0) -> bool:
        for w in self.workers:
            w.queue.put(None)
        end = time.monotonic() + timeout
        for w in self.workers:
            w._thread.join(max(0.0, end - time.monotonic()))
        return not any(w.alive() for w in self.workers)

    def stream(self, session: int) -> Stream | None:
        w = self._of.get(session)
        return w.stream(session) if w is not None else None

    @property
    def compute_ns(self) -> list[int]:
        return [v for w in self.workers for v in w.compute_ns]

    @property
    def busy_ns(self) -> int:
        return sum(w.busy_ns for w in self.workers)

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.workers)

    @property
    def observe(self) -> Callable[[float], None] | None:
        return self.workers[0].observe

    @observe.setter
    def observe(self, fn: Callable[[float], None] | None) -> None:
        for w in self.workers:
            w.observe = fn
