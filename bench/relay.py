"""`stemlink relay`: a seeded, deterministic user-space impairment relay for UDP.

The kernels here have no netem, so impaired-network tests and benchmarks put this relay
between client and server on loopback. It is built like the rest of stemlink:

- `Impairment` is the sans-IO core, one per direction ("up" = client→server, "down" =
  server→client). It is fed `(datagram, now)` and returns `Release(time, datagram)`
  decisions; it never touches a socket or a clock. Held datagrams (a reorder waiting for
  its neighbour) come out of `poll(now)` once `deadline()` has passed.
- `UdpRelay` is the thin asyncio/uvloop glue: one listening socket for clients, one
  upstream socket per client address (so several clients work at once and replies route
  back), and one heap of timed releases behind one re-armed timer.
- `Relay` runs a `UdpRelay` on its own thread and loop, as a context manager, for tests and
  benchmarks.

What each knob does, per datagram and per direction, in this order:

1. outage: inside an outage window (seconds after the first datagram the relay saw, in
   either direction) every datagram of both directions is dropped.
2. loss: a Gilbert–Elliott chain with a lossless Good state and an all-loss Bad state.
   `loss` is the stationary loss rate p and `burst` the mean burst length B (consecutive
   losses): P(Bad→Good) = r = 1/B, P(Good→Bad) = p·r/(1−p). Independent (Bernoulli)
   losses are the chain with r = 1−p, whose mean burst is 1/(1−p); any B at or below that
   (B = 1 in particular) gives independent losses.
3. delay: `delay_ms` fixed plus jitter drawn from a Lomax (Pareto II, shape 1.5)
   distribution with median ≈ 6 % of `jitter_ms`, capped at `jitter_ms` (about 2.7 % of
   datagrams hit the cap). Delay alone never reorders: release = max(arrival + delay,
   previous release), first in first out.
4. reorder: with probability `reorder` a datagram is held back and released right after
   the next datagram that passes in the same direction (an adjacent swap), or after
   `REORDER_HOLD_S` if none comes.
5. duplicate: with probability `duplicate` a second copy follows the datagram at once.

Each mechanism draws from its own seeded numpy Generator (seed = SeedSequence of
(seed, direction, mechanism)), so a run is reproducible given the same arrival order, and
switching one knob on does not change which datagrams another knob picks.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from stemlink.errors import StemlinkError
from stemlink.sockets import udp_socket

DIRECTIONS = ("up", "down")  # up = client → server, down = server → client
REORDER_HOLD_S = 0.020  # a datagram held for a swap waits at most this long for a partner
JITTER_SHAPE = 1.5  # Lomax shape: heavy tail (finite mean, infinite variance)
JITTER_SCALE = 0.1  # Lomax scale as a fraction of the cap: median ≈ 0.059 × cap
RNG_BATCH = 4096  # uniforms drawn at a time per mechanism
MAX_FLOWS = 1024  # client addresses served at once
FLOW_IDLE_S = 60.0  # an upstream socket unused this long is closed
MAX_DATAGRAM = 65535
TIMER_SLACK_S = 0.0002  # release what is due this close to now rather than re-arm a timer


class RelayError(StemlinkError):
    """A relay setting or address the user can fix."""


@dataclass(frozen=True)
class LinkSpec:
    """The impairment of one direction. Probabilities in [0, 1), times in ms."""

    loss: float = 0.0  # stationary loss rate of the Gilbert–Elliott chain
    burst: float = 1.0  # mean loss-burst length in datagrams (≤ 1/(1−loss): independent)
    jitter_ms: float = 0.0  # cap of the heavy-tailed extra delay
    delay_ms: float = 0.0  # fixed one-way delay
    reorder: float = 0.0  # probability of swapping a datagram with its successor
    duplicate: float = 0.0  # probability of sending a datagram twice

    def check(self) -> LinkSpec:
        for name in ("loss", "reorder", "duplicate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise RelayError(f"{name} {v:g}: must be a probability in [0, 1)")
        if not self.burst >= 1.0:
            raise RelayError(f"burst {self.burst:g}: the mean burst length is at least 1")
        for name in ("jitter_ms", "delay_ms"):
            v = getattr(self, name)
            if not 0.0 <= v <= 10_000.0:
                raise RelayError(f"{name.replace('_', '-')} {v:g}: must be in [0, 10000] ms")
        return self

    def describe(self) -> str:
        parts = []
        if self.loss:
            parts.append(f"loss {100 * self.loss:g} % (mean burst "
                         f"{ge_mean_burst(self.loss, self.burst):.2f})")
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g} ms")
        if self.jitter_ms:
            parts.append(f"jitter ≤ {self.jitter_ms:g} ms")
        if self.reorder:
            parts.append(f"reorder {100 * self.reorder:g} %")
        if self.duplicate:
            parts.append(f"duplicate {100 * self.duplicate:g} %")
        return ", ".join(parts) or "clean"


# The named profiles: the same impairment in both directions.
PROFILES: dict[str, LinkSpec] = {
    "wired": LinkSpec(jitter_ms=0.3),
    "wifi": LinkSpec(loss=0.02, burst=3.0, jitter_ms=3.0, reorder=0.005),
    "stress": LinkSpec(loss=0.10, burst=2.0, jitter_ms=5.0, reorder=0.01, duplicate=0.005),
}


def ge_rates(loss: float, burst: float) -> tuple[float, float]:
    """(P(Good→Bad), P(Bad→Good)) of the Gilbert–Elliott chain for loss rate and burst."""
    if loss <= 0.0:
        return 0.0, 1.0
    r = min(1.0 / burst, 1.0 - loss)  # r = 1 − p is independent loss; never anti-bursty
    return loss * r / (1.0 - loss), r


def ge_mean_burst(loss: float, burst: float) -> float:
    """The mean burst length the chain actually has (burst, or 1/(1−p) if that is more)."""
    return 1.0 / ge_rates(loss, burst)[1] if loss > 0 else 0.0


@dataclass(frozen=True)
class Outage:
    start_s: float  # seconds after the first datagram the relay saw
    length_s: float


class Outages:
    """Outage windows shared by both directions, timed from the first datagram seen."""

    def __init__(self, windows: Iterable[Outage] = ()) -> None:
        self.windows = tuple(windows)
        for w in self.windows:
            if w.start_s < 0 or w.length_s <= 0:
                raise RelayError(f"outage {w.start_s:g} {w.length_s:g}: start must be ≥ 0 "
                                 "and length > 0 seconds")
        self.origin: float | None = None

    def active(self, now: float) -> bool:
        if self.origin is None:
            self.origin = now
        t = now - self.origin
        return any(w.start_s <= t < w.start_s + w.length_s for w in self.windows)


class _Uniforms:
    """Uniform [0, 1) draws from one seeded Generator, fetched in batches."""

    def __init__(self, seq: np.random.SeedSequence) -> None:
        self.rng = np.random.default_rng(seq)
        self.buf = self.rng.random(RNG_BATCH)
        self.i = 0

    def __call__(self) -> float:
        if self.i == RNG_BATCH:
            self.rng.random(out=self.buf)
            self.i = 0
        u = self.buf[self.i]
        self.i += 1
        return float(u)


@dataclass
class Release:
    """A decision: send `data` at `time` (the same clock as the `now` fed in)."""

    time: float
    data: bytes
    arrival: float  # when it came in
    meta: Any = None  # whatever the caller passed to `feed` with it (e.g. its flow)


@dataclass
class DirectionStats:
    """What one direction did; 'delay' is the scheduled extra delay of released datagrams."""

    received: int = 0  # datagrams into the relay
    sent: int = 0  # datagrams out (filled in by the glue; duplicates count twice)
    lost: int = 0  # dropped by the loss model
    outage: int = 0  # dropped inside an outage window
    duplicated: int = 0
    reordered: int = 0  # adjacent swaps done
    reorder_timeouts: int = 0  # held for a swap, but no partner came in time
    send_errors: int = 0  # the socket refused (filled in by the glue)
    bursts: int = 0  # loss bursts (runs of consecutive loss-model drops)
    delay_sum_ms: float = 0.0
    delay_max_ms: float = 0.0
    delayed: int = 0  # datagrams the delay figures are over
    measured_sum_ms: float = 0.0  # release time actually achieved − arrival (glue)
    measured_max_ms: float = 0.0
    measured_n: int = 0

    @property
    def dropped(self) -> int:
        return self.lost + self.outage

    @property
    def loss_rate(self) -> float:
        n = self.received - self.outage
        return self.lost / n if n else 0.0

    @property
    def mean_burst(self) -> float:
        return self.lost / self.bursts if self.bursts else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(dropped=self.dropped, loss_rate=self.loss_rate, mean_burst=self.mean_burst,
                 delay_mean_ms=self.delay_sum_ms / self.delayed if self.delayed else 0.0,
                 measured_mean_ms=(self.measured_sum_ms / self.measured_n
                                   if self.measured_n else 0.0))
        return d

    def describe(self) -> str:
        d = self.as_dict()
        return (f"in {self.received}, out {self.sent}, dropped {self.dropped} (loss model "
                f"{self.lost} = {100 * self.loss_rate:.2f} % in {self.bursts} bursts, mean "
                f"burst {self.mean_burst:.2f}; outage {self.outage}), duplicated "
                f"{self.duplicated}, reordered {self.reordered} (+{self.reorder_timeouts} "
                f"unpaired), added delay mean {d['delay_mean_ms']:.3f} / max "
                f"{self.delay_max_ms:.3f} ms scheduled, {d['measured_mean_ms']:.3f} / "
                f"{self.measured_max_ms:.3f} ms measured, send errors {self.send_errors}")


Logger = Callable[[float, str, int, str], None]  # (now, direction, size, action)


class Impairment:
    """The sans-IO impairment of one direction. See the module docstring for the model."""

    def __init__(self, spec: LinkSpec, seed: int, direction: str,
                 outages: Outages | None = None, log: Logger | None = None) -> None:
        self.spec = spec.check()
        self.direction = direction
        self.outages = outages or Outages()
        self.log = log
        ss = np.random.SeedSequence([seed & 0xFFFFFFFF, DIRECTIONS.index(direction)])
        self._u_loss, self._u_jit, self._u_reo, self._u_dup = (_Uniforms(s)
                                                               for s in ss.spawn(4))
        self._q, self._r = ge_rates(spec.loss, spec.burst)
        self.bad = False  # Gilbert–Elliott state
        self._last_release = -math.inf
        self._held: tuple[float, float, bytes, Any] | None = None  # arrival, ready, data, meta
        self.stats = DirectionStats()

    # -- the decision chain
    def feed(self, data: bytes, now: float, meta: Any = None) -> list[Release]:
        st = self.stats
        st.received += 1
        if self.outages.active(now):
            st.outage += 1
            self._say(now, len(data), "outage")
            return []
        if self._lost():
            st.lost += 1
            self._say(now, len(data), "drop")
            return []
        ready = now + self._delay_s()
        # one draw per passing datagram, held or not, so that the decisions depend only
        # on the arrival order and never on when a reorder hold timed out
        pick = self.spec.reorder > 0.0 and self._u_reo() < self.spec.reorder
        if self._held is None and pick:
            self._held = (now, ready, data, meta)
            return []
        out = self._release(now, ready, data, meta, "")
        if self._held is not None:
            h_arr, h_ready, h_data, h_meta = self._held
            self._held = None
            st.reordered += 1
            out += self._release(h_arr, max(h_ready, out[0].time), h_data, h_meta, "reorder ")
        return out

    def deadline(self) -> float | None:
        """When `poll` has something to release (a reorder that found no partner)."""
        return self._held[0] + REORDER_HOLD_S if self._held is not None else None

    def poll(self, now: float) -> list[Release]:
        if self._held is None or now < self._held[0] + REORDER_HOLD_S:
            return []
        h_arr, h_ready, h_data, h_meta = self._held
        self._held = None
        self.stats.reorder_timeouts += 1
        return self._release(h_arr, max(h_ready, now), h_data, h_meta, "reorder-timeout ")

    # -- the pieces
    def _lost(self) -> bool:
        if self.spec.loss <= 0.0:
            return False
        u = self._u_loss()
        was_bad = self.bad
        self.bad = (u >= self._r) if was_bad else (u < self._q)
        if self.bad and not was_bad:
            self.stats.bursts += 1
        return self.bad

    def _delay_s(self) -> float:
        s = self.spec
        d = s.delay_ms
        if s.jitter_ms > 0.0:
            u = self._u_jit()
            lomax = (1.0 - u) ** (-1.0 / JITTER_SHAPE) - 1.0
            d += min(s.jitter_ms, JITTER_SCALE * s.jitter_ms * lomax)
        return d / 1000.0

    def _release(self, arrival: float, ready: float, data: bytes, meta: Any,
                 tag: str) -> list[Release]:
        t = max(ready, self._last_release)  # FIFO: delay never overtakes
        self._last_release = t
        st = self.stats
        added = 1000.0 * (t - arrival)
        st.delayed += 1
        st.delay_sum_ms += added
        st.delay_max_ms = max(st.delay_max_ms, added)
        out = [Release(t, data, arrival, meta)]
        dup = self.spec.duplicate and self._u_dup() < self.spec.duplicate
        if dup:
            st.duplicated += 1
            out.append(Release(t, data, arrival, meta))
        action = f"{tag}delay {added:.3f}ms" if added > 0 else f"{tag}pass".strip()
        self._say(arrival, len(data), action + (" dup" if dup else ""))
        return out

    def _say(self, now: float, size: int, action: str) -> None:
        if self.log is not None:
            self.log(now, self.direction, size, action)


# ------------------------------------------------------------------------ TCP streams
TCP_MSS = 1448  # bytes per segment: Ethernet/Wi-Fi MTU 1500 with timestamps
TCP_RTO_MIN_S = 0.200  # Linux's minimum retransmission timeout (TCP_RTO_MIN)
TCP_DUPACKS = 3  # later segments that trigger a fast retransmit
TCP_PTO_MIN_S = 0.010  # floor of the tail-loss-probe timeout in this model
TCP_RECOVERY = ("linux", "rto")


@dataclass
class _Segment:
    data: bytes
    arrival: float
    ready: float  # arrival + link delay, before head-of-line blocking
    hole: bool = False  # lost on its first transmission
    later: int = 0  # segments that arrived after it (each would send a duplicate ACK)
    rto_at: float = 0.0  # when the retransmission timer fires
    recovered: float | None = None  # when its retransmission arrives


class StreamImpairment:
    """The same link (one direction) for a TCP byte stream, sans-IO.

    TCP hides loss, reordering and duplication from the application and turns them into
    delay. The stream is cut into MSS-sized segments; each goes through the same outage,
    Gilbert–Elliott loss and jitter as a datagram would. A lost segment is retransmitted
    and everything behind it waits (head-of-line blocking: bytes are released in order):

    - recovery "linux" (default): fast retransmit once TCP_DUPACKS later segments have
      arrived, or a tail-loss probe TCP_PTO_MIN_S (or 2 RTT, if more) after the last
      segment when fewer follow; the retransmission arrives one round trip later.
    - recovery "rto": every loss waits for the retransmission timeout.
    - A fast retransmission that is lost again is found one probe timeout later (as
      Linux's RACK/TLP would, while data flows). A timer-driven retransmission that is lost
      again, and every segment sent into an outage, waits for the retransmission timeout
      (at least TCP_RTO_MIN_S = 200 ms), doubling on each further failure (exponential
      backoff), timed from the first lost transmission.

    Reordering and duplication cost nothing visible on TCP (the receiver's stack puts
    segments back in order and discards copies), so those knobs are ignored here.
    Congestion control (the window shrinking after a loss) is not modelled: this is a
    lower bound on what a loss costs a TCP stream.
    """

    def __init__(self, spec: LinkSpec, seed: int, direction: str,
                 outages: Outages | None = None, recovery: str = "linux",
                 rto_s: float = TCP_RTO_MIN_S, log: Logger | None = None) -> None:
        if recovery not in TCP_RECOVERY:
            raise RelayError(f"TCP recovery {recovery!r}: choose from {TCP_RECOVERY}")
        self.link = Impairment(replace(spec, reorder=0.0, duplicate=0.0), seed, direction,
                               outages, None)
        self.recovery, self.rto = recovery, max(rto_s, TCP_RTO_MIN_S)
        self.direction, self.log = direction, log
        self.stats = self.link.stats  # segments, not datagrams
        # A retransmission leaves a round trip or more after the burst that took the
        # original, so it is lost with the stationary rate, from its own stream.
        rseq = np.random.SeedSequence([seed & 0xFFFFFFFF, DIRECTIONS.index(direction), 99])
        self._u_retx = _Uniforms(rseq)
        self.retransmissions = 0
        self._queue: list[_Segment] = []  # segments waiting behind a hole, in order
        self._last_release = -math.inf
        self._last_arrival = -math.inf
        one_way_ms = spec.delay_ms + spec.jitter_ms / 2
        self.pto = max(TCP_PTO_MIN_S, 4 * one_way_ms / 1000)  # 2 × RTT

    def feed(self, data: bytes, now: float) -> list[Release]:
        for i in range(0, len(data), TCP_MSS):
            self._segment(data[i:i + TCP_MSS], now)
        self._last_arrival = now
        return self._drain(now)

    def deadline(self) -> float | None:
        t = [h.rto_at for h in self._holes()]
        if self.recovery == "linux" and any(0 <= h.later < TCP_DUPACKS
                                            for h in self._holes()):
            t.append(self._last_arrival + self.pto)
        return min(t) if t else None

    def poll(self, now: float) -> list[Release]:
        for h in self._holes():
            if h.rto_at <= now and (self.recovery == "rto" or h.later < 0
                                    or h.rto_at <= self._last_arrival + self.pto):
                self._retransmit(h, h.rto_at, by_timer=True)
            elif (self.recovery == "linux" and h.later >= 0
                  and now >= self._last_arrival + self.pto):
                # tail-loss probe: the receiver's answer reports the hole
                self._retransmit(h, self._last_arrival + self.pto)
            elif now >= h.rto_at:
                self._retransmit(h, h.rto_at, by_timer=True)
        return self._drain(now)

    # -- the pieces
    def _holes(self) -> list[_Segment]:
        return [s for s in self._queue if s.hole and s.recovered is None]

    def _segment(self, data: bytes, now: float) -> None:
        link, st = self.link, self.stats
        st.received += 1
        if link.outages.active(now):
            st.outage += 1
            seg = _Segment(data, now, now, hole=True, rto_at=now + self.rto)
            self._backoff_past_outage(seg)
            self._say(now, len(data), "outage")
        elif link._lost():
            st.lost += 1
            seg = _Segment(data, now, now, hole=True, rto_at=now + self.rto)
            self._say(now, len(data), "drop")
        else:
            seg = _Segment(data, now, now + link._delay_s())
            for h in self._holes():  # each segment that arrives is a duplicate ACK
                h.later += 1
                if self.recovery == "linux" and h.later == TCP_DUPACKS:
                    self._retransmit(h, now)
        self._queue.append(seg)

    def _backoff_past_outage(self, seg: _Segment) -> None:
        """Retransmissions at RTO, 2·RTO, 4·RTO … until one falls outside every outage.
        The timer is the connection's: a segment sent while an earlier one is already
        backing off goes out with it, once that one is acknowledged (go-back-N)."""
        for h in self._holes():
            if h.later < 0:
                seg.rto_at, seg.later = h.rto_at, h.later
                return
        wait, t = self.rto, seg.arrival + self.rto
        while self.link.outages.active(t):
            wait *= 2
            t += wait
        seg.rto_at = t
        seg.later = -(1 << 30)  # no ACK comes back through an outage: only the timer helps

    def _retransmit(self, h: _Segment, when: float, by_timer: bool = False) -> None:
        """Resend hole `h`, triggered at `when` (by duplicate ACKs or a probe, which must
        first travel back to the sender, or by its timer). A retransmission can be lost
        too: after a timer-driven one the timer fires again, its timeout doubled; after a
        fast retransmit ("linux"), recent-ACK loss detection (RACK) or the probe finds it
        again one probe timeout later."""
        depart = when if by_timer else when + self.link._delay_s()
        fast = self.recovery == "linux" and not by_timer
        wait = self.pto if fast else 2 * self.rto
        self.retransmissions += 1
        while self._u_retx() < self.link.spec.loss:
            depart += wait
            if not fast:
                wait *= 2
            self.retransmissions += 1
        h.recovered = depart + self.link._delay_s()

    def _drain(self, now: float) -> list[Release]:
        out = []
        while self._queue:
            s = self._queue[0]
            if s.hole and s.recovered is None:
                break
            self._queue.pop(0)
            ready = s.recovered if s.hole else s.ready
            t = max(ready, self._last_release)
            self._last_release = t
            added = 1000 * (t - s.arrival)
            st = self.stats
            st.delayed += 1
            st.delay_sum_ms += added
            st.delay_max_ms = max(st.delay_max_ms, added)
            if not s.hole:
                self._say(s.arrival, len(s.data), f"delay {added:.3f}ms" if added > 0
                          else "pass")
            else:
                self._say(s.arrival, len(s.data), f"retransmitted delay {added:.3f}ms")
            out.append(Release(t, s.data, s.arrival))
        return out

    def _say(self, now: float, size: int, action: str) -> None:
        if self.log is not None:
            self.log(now, self.direction, size, action)


# ------------------------------------------------------------------------ configuration
@dataclass
class RelayConfig:
    up: LinkSpec = field(default_factory=LinkSpec)
    down: LinkSpec = field(default_factory=LinkSpec)
    outages: tuple[Outage, ...] = ()
    seed: int = 0
    profile: str | None = None

    def describe(self) -> str:
        out = (f"profile {self.profile or 'none'}, seed {self.seed}; up: "
               f"{self.up.describe()}; down: {self.down.describe()}")
        for o in self.outages:
            out += f"; outage {o.length_s:g} s at {o.start_s:g} s"
        return out


KNOBS = ("loss", "burst", "jitter_ms", "delay_ms", "reorder", "duplicate")


def make_config(profile: str | None = None, seed: int = 0,
                outages: Iterable[tuple[float, float]] = (), **knobs: Any) -> RelayConfig:
    """A config from a profile (or clean) with knobs overriding it. Each knob is a float
    for both directions, a dict {"up": v, "down": v} for one or both, or None."""
    if profile is not None and profile not in PROFILES:
        raise RelayError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    base = PROFILES[profile] if profile else LinkSpec()
    specs = {"up": base, "down": base}
    for name, value in knobs.items():
        if name not in KNOBS:
            raise RelayError(f"unknown relay setting {name!r}")
        if value is None:
            continue
        per = value if isinstance(value, dict) else {"up": value, "down": value}
        for d, v in per.items():
            specs[d] = replace(specs[d], **{name: float(v)})
    return RelayConfig(specs["up"].check(), specs["down"].check(),
                       tuple(Outage(float(s), float(n)) for s, n in outages), seed, profile)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not sep or not 0 <= p < 65536:
        raise RelayError(f"{what} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", p


# ------------------------------------------------------------------------ asyncio glue
class _LogFile:
    """One line per datagram: seconds since start, direction, bytes, action."""

    def __init__(self, path: str | Path, t0: float) -> None:
        self.f: IO[str] = open(path, "w", buffering=1 << 16)  # noqa: SIM115
        self.t0 = t0

    def __call__(self, now: float, direction: str, size: int, action: str) -> None:
        self.f.write(f"{now - self.t0:.6f} {direction} {size} {action}\n")

    def close(self) -> None:
        self.f.close()


class _Flow:
    """One client address and its upstream socket toward the server."""

    def __init__(self, client: Any, sock: socket.socket, now: float) -> None:
        self.client, self.sock, self.last = client, sock, now


Tap = Callable[[str, bytes, str], None]  # (direction, datagram, "in" | "out")


class UdpRelay:
    """The relay's socket glue. `run()` until `stop()` (or SIGINT/SIGTERM when asked)."""

    def __init__(self, config: RelayConfig, listen: tuple[str, int], to: tuple[str, int],
                 log_path: str | Path | None = None, tap: Tap | None = None) -> None:
        self.config = config
        self.to = to
        self.tap = tap
        try:
            self.sock = udp_socket(listen[0], listen[1], bind=True)
        except OSError as e:
            raise RelayError(f"cannot listen on {listen[0]}:{listen[1]}: "
                             f"{e.strerror or e}") from None
        self.address = self.sock.getsockname()[:2]
        self.t0 = time.monotonic()
        self._log = _LogFile(log_path, self.t0) if log_path else None
        outages = Outages(config.outages)
        self.links = {"up": Impairment(config.up, config.seed, "up", outages, self._log),
                      "down": Impairment(config.down, config.seed, "down", outages, self._log)}
        self.flows: dict[Any, _Flow] = {}
        self.flows_refused = 0
        self._heap: list[tuple[float, int, str, Release]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.ready = threading.Event()

    @property
    def stats(self) -> dict[str, DirectionStats]:
        return {d: imp.stats for d, imp in self.links.items()}

    def summary(self) -> str:
        lines = [f"relay {self.address[0]}:{self.address[1]} -> {self.to[0]}:{self.to[1]}, "
                 f"{self.config.describe()}; {len(self.flows)} flow(s), "
                 f"{self.flows_refused} datagram(s) from clients over the limit"]
        lines += [f"{d:>4}: {s.describe()}" for d, s in self.stats.items()]
        return "\n".join(lines)

    async def run(self, install_signals: bool = False, seconds: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        loop.add_reader(self.sock.fileno(), self._on_client)
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
        self.ready.set()
        try:
            end = None if seconds is None else time.monotonic() + seconds
            while not self._stop.is_set():
                wait = FLOW_IDLE_S / 4 if end is None else min(FLOW_IDLE_S / 4,
                                                                end - time.monotonic())
                if wait <= 0:
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                self._expire(time.monotonic())
        finally:
            if self._timer is not None:
                self._timer.cancel()
            loop.remove_reader(self.sock.fileno())
            for fl in self.flows.values():
                loop.remove_reader(fl.sock.fileno())
                fl.sock.close()
            self.sock.close()
            if self._log is not None:
                self._log.close()

    def stop(self) -> None:
        """Thread-safe."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    # -- receiving
    def _on_client(self) -> None:
        now = time.monotonic()
        for _ in range(256):  # bounded batch per wake-up, then let the loop breathe
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # e.g. ICMP errors surfacing on the socket: not ours to handle
            fl = self.flows.get(addr)
            if fl is None:
                fl = self._open_flow(addr, now)
                if fl is None:
                    continue
            fl.last = now
            self._feed("up", data, now, fl)
        self._flush(time.monotonic())

    def _on_server(self, fl: _Flow) -> None:
        now = time.monotonic()
        for _ in range(256):
            try:
                data = fl.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # port unreachable while the server is down, etc.
            fl.last = now
            self._feed("down", data, now, fl)
        self._flush(time.monotonic())

    def _open_flow(self, addr: Any, now: float) -> _Flow | None:
        if len(self.flows) >= MAX_FLOWS:
            self.flows_refused += 1
            return None
        try:
            sock = udp_socket(self.to[0], self.to[1], bind=False)
        except OSError:
            self.flows_refused += 1
            return None
        fl = _Flow(addr, sock, now)
        self.flows[addr] = fl
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_server, fl)
        return fl

    def _expire(self, now: float) -> None:
        for addr, fl in list(self.flows.items()):
            if now - fl.last > FLOW_IDLE_S:
                assert self._loop is not None
                self._loop.remove_reader(fl.sock.fileno())
                fl.sock.close()
                del self.flows[addr]

    # -- releasing
    def _feed(self, direction: str, data: bytes, now: float, fl: _Flow) -> None:
        if self.tap is not None:
            self.tap(direction, data, "in")
        self._push(direction, self.links[direction].feed(data, now, fl))

    def _push(self, direction: str, releases: list[Release]) -> None:
        for r in releases:
            heapq.heappush(self._heap, (r.time, next(self._order), direction, r))

    def _flush(self, now: float) -> None:
        for direction, imp in self.links.items():
            self._push(direction, imp.poll(now))
        heap = self._heap
        while heap and heap[0][0] <= now + TIMER_SLACK_S:
            _, _, direction, r = heapq.heappop(heap)
            self._send(direction, r.data, r.meta, r.arrival)
        self._arm(now)

    def _send(self, direction: str, data: bytes, fl: _Flow, arrival: float) -> None:
        st = self.links[direction].stats
        if fl.sock.fileno() < 0:  # its flow expired while the datagram was held
            st.send_errors += 1
            return
        try:
            if direction == "up":
                fl.sock.send(data)
            else:
                self.sock.sendto(data, fl.client)
        except OSError:
            st.send_errors += 1
            return
        st.sent += 1
        waited = 1000.0 * (time.monotonic() - arrival)
        st.measured_n += 1
        st.measured_sum_ms += waited
        st.measured_max_ms = max(st.measured_max_ms, waited)
        if self.tap is not None:
            self.tap(direction, data, "out")

    def _arm(self, now: float) -> None:
        due = [t for t in (self._heap[0][0] if self._heap else None,
                           self.links["up"].deadline(), self.links["down"].deadline())
               if t is not None]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, min(due) - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flush(time.monotonic())


class TcpRelay:
    """The TCP mode: a proxy that accepts connections on `listen`, opens one to `to` for
    each, and moves each direction's bytes through a `StreamImpairment` (one per
    connection and direction; all share the outage clock)."""

    READ_BYTES = 1 << 16

    def __init__(self, config: RelayConfig, listen: tuple[str, int], to: tuple[str, int],
                 log_path: str | Path | None = None, recovery: str = "linux") -> None:
        if recovery not in TCP_RECOVERY:
            raise RelayError(f"TCP recovery {recovery!r}: choose from {TCP_RECOVERY}")
        self.config, self.to, self.recovery = config, to, recovery
        try:
            family = socket.getaddrinfo(listen[0], listen[1], type=socket.SOCK_STREAM)[0][0]
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(listen)
            self.sock.listen(64)
            self.sock.setblocking(False)
        except OSError as e:
            raise RelayError(f"cannot listen on {listen[0]}:{listen[1]}: "
                             f"{e.strerror or e}") from None
        self.address = self.sock.getsockname()[:2]
        self.t0 = time.monotonic()
        self._log = _LogFile(log_path, self.t0) if log_path else None
        self.outages = Outages(config.outages)
        self.links: list[dict[str, StreamImpairment]] = []
        self.refused = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self.ready = threading.Event()

    @property
    def stats(self) -> dict[str, DirectionStats]:
        """Summed over connections (in segments of at most TCP_MSS bytes)."""
        out = {}
        for d in DIRECTIONS:
            total = DirectionStats()
            for link in self.links:
                for f in dataclasses.fields(DirectionStats):
                    a, b = getattr(total, f.name), getattr(link[d].stats, f.name)
                    setattr(total, f.name, max(a, b) if f.name.endswith("max_ms") else a + b)
            out[d] = total
        return out

    def retransmissions(self) -> dict[str, int]:
        return {d: sum(link[d].retransmissions for link in self.links) for d in DIRECTIONS}

    def summary(self) -> str:
        rt = self.retransmissions()
        lines = [f"tcp relay {self.address[0]}:{self.address[1]} -> {self.to[0]}:{self.to[1]}, "
                 f"{self.config.describe()} (reorder/duplicate do not apply to TCP), recovery "
                 f"{self.recovery}; {len(self.links)} connection(s), {self.refused} refused"]
        lines += [f"{d:>4}: segments {s.describe()}, retransmissions {rt[d]}"
                  for d, s in self.stats.items()]
        return "\n".join(lines)

    async def run(self, install_signals: bool = False, seconds: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        server = await asyncio.start_server(self._accept, sock=self.sock)
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
        self.ready.set()
        try:
            if seconds is None:
                await self._stop.wait()
            else:
                try:
                    await asyncio.wait_for(self._stop.wait(), seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            server.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._log is not None:
                self._log.close()

    def stop(self) -> None:
        """Thread-safe."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_r, up_w = await asyncio.open_connection(self.to[0], self.to[1])
            except OSError:
                self.refused += 1
                writer.close()
                return
            n = len(self.links)
            seed = (self.config.seed * 1_000_003 + n) & 0xFFFFFFFF  # per connection
            link = {"up": StreamImpairment(self.config.up, seed, "up", self.outages,
                                           self.recovery, log=self._log),
                    "down": StreamImpairment(self.config.down, seed, "down", self.outages,
                                             self.recovery, log=self._log)}
            self.links.append(link)
            await asyncio.gather(self._pump(reader, up_w, link["up"]),
                                 self._pump(up_r, writer, link["down"]),
                                 return_exceptions=True)
            for w in (writer, up_w):
                w.close()
        except asyncio.CancelledError:
            writer.close()  # the relay is stopping: end quietly
        finally:
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    imp: StreamImpairment) -> None:
        pending: collections.deque[Release] = collections.deque()
        read: asyncio.Future | None = asyncio.ensure_future(reader.read(self.READ_BYTES))
        st = imp.stats
        try:
            while True:
                now = time.monotonic()
                pending.extend(imp.poll(now))
                while pending and pending[0].time <= now + TIMER_SLACK_S:
                    r = pending.popleft()
                    writer.write(r.data)
                    st.sent += 1
                    waited = 1000.0 * (time.monotonic() - r.arrival)
                    st.measured_n += 1
                    st.measured_sum_ms += waited
                    st.measured_max_ms = max(st.measured_max_ms, waited)
                await writer.drain()
                due = [t for t in (pending[0].time if pending else None, imp.deadline())
                       if t is not None]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                if read is None:  # the sender closed: deliver what is held, then close
                    if timeout is None:
                        break
                    await asyncio.sleep(timeout)
                    continue
                done, _ = await asyncio.wait({read}, timeout=timeout)
                if read in done:
                    try:
                        data = read.result()
                    except OSError:
                        data = b""
                    if data:
                        pending.extend(imp.feed(data, time.monotonic()))
                        read = asyncio.ensure_future(reader.read(self.READ_BYTES))
                    else:
                        read = None
        finally:
            if read is not None:
                read.cancel()
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass


class Relay:
    """A `UdpRelay` on its own thread and event loop, for tests and benchmarks:

        with Relay(server_address, make_config("wifi", seed=1)) as relay:
            send to relay.address ...
        relay.stats["down"].lost
    """

    def __init__(self, to: tuple[str, int], config: RelayConfig | None = None,
                 listen: tuple[str, int] = ("127.0.0.1", 0), log_path: str | Path | None = None,
                 tap: Tap | None = None, tcp: bool = False,
                 tcp_recovery: str = "linux") -> None:
        from stemlink.loop import run_loop

        self.relay: UdpRelay | TcpRelay = (
            TcpRelay(config or RelayConfig(), listen, to, log_path, tcp_recovery) if tcp
            else UdpRelay(config or RelayConfig(), listen, to, log_path, tap))
        self._thread = threading.Thread(target=run_loop, args=(self.relay.run(),),
                                        name="stemlink-relay", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.relay.address[0], self.relay.address[1]

    @property
    def stats(self) -> dict[str, DirectionStats]:
        return self.relay.stats

    def summary(self) -> str:
        return self.relay.summary()

    def __enter__(self) -> Relay:
        self._thread.start()
        if not self.relay.ready.wait(10):
            raise RelayError("the relay did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.relay.stop()
        self._thread.join(10)


def stats_json(config: RelayConfig, stats: dict[str, DirectionStats]) -> dict:
    return {"config": {"profile": config.profile, "seed": config.seed,
                       "up": asdict(config.up), "down": asdict(config.down),
                       "outages": [asdict(o) for o in config.outages],
                       "describe": config.describe()},
            **{d: s.as_dict() for d, s in stats.items()}}


def run_relay(config: RelayConfig, listen: tuple[str, int], to: tuple[str, int],
              log_path: str | None, seconds: float | None, say: Callable[[str], None],
              stats_path: str | None = None, tcp: bool = False,
              tcp_recovery: str = "linux") -> UdpRelay | TcpRelay:
    """The `stemlink relay` command: run until SIGINT/SIGTERM (or `seconds`)."""
    import json

    from stemlink.loop import run_loop

    relay: UdpRelay | TcpRelay = (TcpRelay(config, listen, to, log_path, tcp_recovery) if tcp
                                  else UdpRelay(config, listen, to, log_path))
    say(f"stemlink relay listening on {relay.address[0]}:{relay.address[1]}"
        f"{' (TCP, recovery ' + tcp_recovery + ')' if tcp else ''}, forwarding to "
        f"{to[0]}:{to[1]}; {config.describe()}")
    try:
        run_loop(relay.run(install_signals=True, seconds=seconds))
    finally:
        say(relay.summary())
        if stats_path:
            js = stats_json(config, relay.stats)
            js["mode"] = "tcp" if tcp else "udp"
            if isinstance(relay, TcpRelay):
                js["tcp"] = {"recovery": tcp_recovery, "connections": len(relay.links),
                             "retransmissions": relay.retransmissions()}
            Path(stats_path).write_text(json.dumps(js) + "\n")
    return relay
