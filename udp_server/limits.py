"""Admission limits, sans-IO: token buckets and session caps, fed `now` by the caller.

- handshake rate per source address (IP, any port): a token bucket that every HELLO spends;
- sessions per source address and the total session cap, checked when a session would open;
- input rate per session: AUDIO/PING/BYE beyond `input_factor` x the negotiated packet rate
  (plus a burst of `input_burst_s` seconds at that rate, so that a client that stalled
  for a few seconds may catch up) are dropped.
  Sessions that declared no playout deadline (file transfer as fast as possible) are bounded
  by the worker's queue instead (MAX_PENDING in core.py), not by the clock.

The caller counts every refusal under the reason these methods return.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class LimitConfig:
    max_sessions: int = 8  # total session cap
    sessions_per_address: int = 4
    handshake_rate: float = 4.0  # HELLOs per second per address, sustained
    handshake_burst: int = 16  # HELLOs per address at once (4 sessions x 2 HELLOs x 2)
    input_factor: float = 2.0  # x the negotiated packet rate of a real-time session
    # seconds of input at input_factor x rate, as a burst: a client that stalled up to
    # 2 x input_burst_s seconds (scheduling, Wi-Fi) may catch up at once
    input_burst_s: float = 2.0
    tracked_addresses: int = 4096  # handshake buckets kept (least recently used go first)

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.sessions_per_address < 1:
            raise ValueError("session limits must be >= 1")
        if self.handshake_rate <= 0 or self.handshake_burst < 1:
            raise ValueError("the handshake rate must be > 0 and its burst >= 1")
        if self.input_factor <= 1 or self.input_burst_s <= 0:
            raise ValueError("the input factor must be > 1 and its burst > 0")


class TokenBucket:
    """`rate` tokens per second up to `burst`; take() spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def take(self, now: float) -> bool:
        if now > self.t:
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Limits:
    def __init__(self, config: LimitConfig | None = None) -> None:
        self.config = config or LimitConfig()
        self._handshakes: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow_handshake(self, host: str, now: float) -> bool:
        b = self._handshakes.get(host)
        if b is None:
            c = self.config
            b = self._handshakes[host] = TokenBucket(c.handshake_rate, c.handshake_burst, now)
            if len(self._handshakes) > c.tracked_addresses:
                self._handshakes.popitem(last=False)
        else:
            self._handshakes.move_to_end(host)
        return b.take(now)

    def refuse_open(self, host: str, open_hosts: list[str]) -> str | None:
        """Why a new session from `host` may not open ("server-full", "per-address"), given
        the hosts of the sessions open now; None if it may."""
        c = self.config
        if len(open_hosts) >= c.max_sessions:
            return "server-full"
        if sum(1 for h in open_hosts if h == host) >= c.sessions_per_address:
            return "per-address"
        return None

    def input_budget(self, sample_rate: int, block: int, realtime: bool, now: float,
                     datagrams_per_block: float = 1.0) -> TokenBucket | None:
        """The session's input bucket, or None (no clock bound: archival sessions).
        datagrams_per_block: AUDIO datagrams the negotiated session sends per block (2 with
        redundancy: a parity after every block)."""
        if not realtime:
            return None
        rate = self.config.input_factor * datagrams_per_block * sample_rate / block
        return TokenBucket(rate, max(rate * self.config.input_burst_s, 8.0), now)
