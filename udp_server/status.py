"""`serve`'s periodic status line, sans-IO: a sample of the server's counters in, one line
(or None) out. The server's loop takes a sample every `--status-interval` seconds.

Rates are over the interval since the previous line. Worker load is the share of the
interval the worker thread spent in inference (100 % = the worker never idle: sessions
miss deadlines and the core drops input as overload). An idle server with
nothing new to say prints nothing, so a headless server's log does not fill with
identical lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ServerSample:
    now: float  # seconds, monotonic
    sessions: int  # open now
    rx_datagrams: int  # cumulative, every datagram received (valid or not)
    dropped: int  # cumulative, every datagram dropped (any reason)
    compute_ns: Sequence[int]  # the worker's per-block compute times so far (it only grows)
    busy_ns: int  # cumulative time the worker spent processing
    queued: int  # input blocks waiting for the worker, all sessions


class ServerStatus:
    def __init__(self) -> None:
        self._last: ServerSample | None = None
        self._seen = 0  # compute_ns entries already accounted for

    def update(self, s: ServerSample) -> str | None:
        last, self._last = self._last, s
        if len(s.compute_ns) < self._seen:  # a new worker (the old one died): start over
            self._seen = 0
        new = np.asarray(s.compute_ns[self._seen:], np.float64)
        self._seen += new.size
        if last is None:
            return None  # the first sample only starts the interval
        dt = max(s.now - last.now, 1e-9)
        rx = s.rx_datagrams - last.rx_datagrams
        drops = s.dropped - last.dropped
        busy = s.busy_ns - last.busy_ns if s.busy_ns >= last.busy_ns else s.busy_ns
        if s.sessions == 0 and rx == 0 and busy == 0 and drops == 0:
            return None
        # compute is attributed to the interval a block finishes in, so a long block can
        # push the sum past the interval: the worker was busy all of it, not more
        load = min(busy / 1e9 / dt, 1.0)
        compute = (f"compute p50 {np.percentile(new, 50) / 1e6:.2f} ms, p99 "
                   f"{np.percentile(new, 99) / 1e6:.2f} ms" if new.size else "no compute")
        return (f"status: {s.sessions} session{'s' if s.sessions != 1 else ''}, "
                f"in {rx / dt:.0f} datagrams/s, worker load {100 * load:.0f} % "
                f"({new.size / dt:.0f} blocks/s, {compute}), queue {s.queued}, "
                f"drops {drops} (total {s.dropped})")
