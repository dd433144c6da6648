"""Earliest-deadline-first order across sessions, sans-IO; owned by the worker thread.

Each session's jobs stay in timestamp order in its own queue; the scheduler picks the
session whose oldest job is due first. A job whose output can no longer be played (it is
past its session's playout budget) is only upkeep of that session's context (an FFT per
hop, no inference, nothing sent: see Stream), so it waits until no session has a job
still worth playing. A session that bursts or falls behind therefore never delays the
others' windows: like Triton's sequence batcher, a stream that falls behind is concealed,
not allowed to hold the rest back.

The batching worker pops jobs in this order until its batch is full; a session whose job
is still in the batch is passed over, so a batch holds at most one window per session and
a session's jobs stay in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container

from stemlink.udp_server.stream import Job, Stream


class Scheduler:
    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self._queues: dict[int, deque[Job]] = {}

    def open(self, stream: Stream) -> None:
        self.streams[stream.session] = stream
        self._queues[stream.session] = deque()

    def close(self, session: int) -> Stream | None:
        self._queues.pop(session, None)
        return self.streams.pop(session, None)

    def submit(self, job: Job) -> bool:
        q = self._queues.get(job.session)
        if q is None:  # its stream was closed: the loop has already forgotten it
            return False
        q.append(job)
        return True

    def has_job(self, busy: Container[int] = ()) -> bool:
        """Whether pop() would return a job."""
        return any(q for sid, q in self._queues.items() if sid not in busy)

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def pop(self, now: float, busy: Container[int] = ()) -> tuple[Stream, Job] | None:
        """The job with the earliest deadline among the heads of all sessions' queues,
        jobs still worth playing before stale ones; sessions in `busy` (a job of theirs
        is still in a batch being assembled) are passed over."""
        best: deque[Job] | None = None
        best_key = (True, 0.0)
        for sid, q in self._queues.items():
            if not q or sid in busy:
                continue
            job = q[0]
            key = (not self.streams[sid].wanted(job.due, now), job.due)
            if best is None or key < best_key:
                best, best_key = q, key
        if best is None:
            return None
        job = best.popleft()
        return self.streams[job.session], job
