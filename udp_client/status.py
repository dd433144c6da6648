"""`send`'s live status line, sans-IO: the receiver's arrays and `now` in, numbers and one
line of text out. The glue (`ticker`) calls it once a second and hands the line to a
printer; `send` prints it with a carriage return on a terminal only.

What "so far" means for each figure, so that the line never contradicts the summary:
- lost: stem blocks still missing `LOST_AFTER_S` after their input block was sent (the
  summary counts what is still missing after the drain);
- late: stem blocks that arrived more than the playout budget (`--jitter-ms`) after
  their input block was sent (as in the summary; only when paced in real time);
- end-to-end: per input block, from its send moment to the arrival of the last stem
  sample that answers it (D later), over the blocks complete so far (as in the summary).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

STATUS_EVERY_S = 1.0
LOST_AFTER_S = 1.0  # a stem block this overdue counts as lost in the status line
RTT_RECENT = 8  # RTT shown: median of the last few PONGs


class ReceiverState(Protocol):
    """What the status reads from the sender's receiver (all owned by the event loop)."""

    sent: int
    received: int
    concealed: int
    duplicates: int
    rtt_ns: list[int]
    send_ns: np.ndarray  # [blocks] capture moment of each input block (NaN: not sent)
    arrival_ns: np.ndarray  # [stems, blocks] arrival of each stem block (NaN: not yet)


@dataclass(frozen=True)
class SendProgress:
    elapsed_s: float
    total_s: float  # audio duration being streamed (input plus the delay D)
    sent: int
    received: int
    expected: int
    lost: int
    late: int
    concealed: int
    rtt_ms: float  # NaN until a PONG came back
    e2e_p50_ms: float  # NaN until a block completed
    e2e_p99_ms: float

    def line(self) -> str:
        return (f"{self.elapsed_s:.1f}/{self.total_s:.1f} s  sent {self.sent}  "
                f"recv {self.received}  lost {self.lost}  late {self.late}  "
                f"concealed {self.concealed}  RTT {_ms(self.rtt_ms, 2)} ms  "
                f"e2e p50/p99 {_ms(self.e2e_p50_ms, 0)}/{_ms(self.e2e_p99_ms, 0)} ms")


def _ms(v: float, digits: int) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


class SendStatus:
    """Measures a receiver's state at `now`; knows the stream's fixed numbers."""

    def __init__(self, *, sample_rate: int, block: int, delay: int, frames: int,
                 jitter_ms: float, realtime: bool = True) -> None:
        self.sample_rate, self.block, self.delay = sample_rate, block, delay
        self.frames = frames  # input samples (the stream is `frames + delay` long)
        self.jitter_ms, self.realtime = jitter_ms, realtime

    def measure(self, rx: ReceiverState, now_ns: int, elapsed_s: float) -> SendProgress:
        send, arrival = rx.send_ns, rx.arrival_ns
        b = self.block
        nblocks = send.shape[0]
        turnaround_ms = (arrival - send[None, :]) / 1e6
        with np.errstate(invalid="ignore"):
            late = int(np.sum(turnaround_ms > self.jitter_ms)) if self.realtime else 0
            overdue = (now_ns - send) > LOST_AFTER_S * 1e9  # False where not sent (NaN)
        lost = int(np.sum(np.isnan(arrival[:, overdue])))
        # end-to-end per input block k: its answer is output samples [kb + D, kb + D + b),
        # i.e. output blocks k1..k2, complete when every stem's blocks there have arrived
        k = np.arange(-(-self.frames // b))
        k1, k2 = (k * b + self.delay) // b, (k * b + self.delay + b - 1) // b
        ok = k2 < nblocks
        k, k1, k2 = k[ok], k1[ok], k2[ok]
        done = np.maximum(arrival[:, k1], arrival[:, k2]).max(axis=0)  # NaN if any missing
        lat = (done - send[k]) / 1e6
        lat = lat[np.isfinite(lat)]
        p50, p99 = (np.percentile(lat, (50, 99)) if lat.size else (math.nan, math.nan))
        rtts = rx.rtt_ns[-RTT_RECENT:]
        return SendProgress(
            elapsed_s=elapsed_s, total_s=nblocks * b / self.sample_rate, sent=rx.sent,
            received=rx.received, expected=int(arrival.size), lost=lost, late=late,
            concealed=rx.concealed,
            rtt_ms=float(np.median(rtts)) / 1e6 if rtts else math.nan,
            e2e_p50_ms=float(p50), e2e_p99_ms=float(p99))


async def ticker(status: SendStatus, rx: ReceiverState, show: Callable[[SendProgress], None],
                 t0: float, every_s: float = STATUS_EVERY_S) -> None:
    """Glue: measure and show once per `every_s` (elapsed from `t0`, monotonic) until
    cancelled. The sender shows the final state itself, once nothing more can arrive."""
    while True:
        await asyncio.sleep(every_s)
        show(status.measure(rx, time.monotonic_ns(), time.monotonic() - t0))
