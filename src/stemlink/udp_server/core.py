"""Server protocol core, sans-IO: datagrams and `now` in, datagrams and jobs out.

It validates, authenticates and routes packets; it never raises on a datagram: anything
malformed is dropped silently and counted by reason. Before an address has echoed a
cookie, the server sends it no more bytes than it received (COOKIE <= HELLO). Cookies are
single-use and live exactly COOKIE_LIFETIME_S; admission limits live in limits.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stemlink.udp_server.limits import LimitConfig, Limits, TokenBucket
from stemlink.wire import packets as pk
from stemlink.wire.auth import (
    SALT_SIZE,
    Aead,
    Credential,
    cookie_key,
    handshake_keys,
    public_key,
    session_keys,
)
from stemlink.wire.constants import (
    BLOCK_FRAMES,
    COOKIE_SIZE,
    PRESET_CODES,
    PRESET_NAMES,
    SYNTHESIS_CODES,
    SYNTHESIS_NAMES,
    ByeReason,
    ErrorCode,
    Features,
    PacketType,
    SampleFormat,
)
from stemlink.wire.seq import ReplayWindow

log = logging.getLogger("stemlink.server")

Addr = tuple[Any, ...]
COOKIE_LIFETIME_MS = 10_000  # exact: issue times are milliseconds
COOKIE_LIFETIME_S = COOKIE_LIFETIME_MS / 1000
ACCEPT_RESENDS = 12  # answers to retransmitted HELLOs per session (the client's tries)
MAX_USED_COOKIES = 65536  # single-use memory; beyond it new handshakes wait (counted)
MAX_GAP_S = 2.0  # a timestamp jump beyond this is refused rather than concealed
RING_BLOCKS = 64  # per-session input blocks buffered between receive loop and worker
MAX_PENDING = 48  # per-session queue bound (< RING_BLOCKS): beyond it blocks are dropped


@dataclass(frozen=True)
class StreamRequest:
    """What a client asked for in HELLO; None = the server's (preset's) choice."""

    preset: str | None = None
    hop_frames: int | None = None  # H
    lookahead: int | None = None  # L
    synthesis: str | None = None  # "standard" | "asymmetric"
    synthesis_hop: int | None = None  # m, samples
    mask_hold: int | None = None  # k, synthesis hops per inference

    @classmethod
    def from_hello(cls, hello: pk.Hello) -> StreamRequest:
        return cls(
            PRESET_NAMES.get(hello.preset),
            None if hello.hop_frames == pk.DEFAULT else hello.hop_frames,
            None if hello.lookahead == pk.DEFAULT else hello.lookahead,
            SYNTHESIS_NAMES.get(hello.synthesis) if hello.synthesis != pk.DEFAULT else None,
            hello.synthesis_hop or None,
            hello.mask_hold or None)


@dataclass(frozen=True)
class StreamSetup:
    """What the separator factory returns for a session: its object and its numbers."""

    separator: Any  # StreamingSeparator (engine); the core never calls into it
    preset: str
    hop_frames: int
    lookahead: int
    synthesis: str
    delay: int
    synthesis_hop: int = 0  # m in samples (0: the model's hop)
    mask_hold: int = 1  # k


@dataclass
class Session:
    id: int
    addr: Addr
    key: bytes | Aead  # server -> client (STEM, PONG, BYE, ERROR); rx_key is the other way
    client_nonce: bytes
    server_nonce: bytes
    block: int
    channels: int
    format: SampleFormat
    setup: StreamSetup
    accept_packet: bytes
    started: float
    last_rx: float
    replay: ReplayWindow = field(default_factory=lambda: ReplayWindow(256))
    next_ts: int = 0  # first sample not yet queued
    ring: np.ndarray | None = None  # [RING_BLOCKS, C, block] input blocks for the worker
    ring_pos: int = 0
    stem_seq: list[int] = field(default_factory=list)
    # jobs handed to the worker, and jobs it has taken: each counter has one writer thread,
    # so their difference is a race-free queue length
    queued: int = 0
    taken: int = 0
    worker_pos: int = 0  # samples the separator has consumed (worker thread only)
    writer: pk.MediaWriter | None = None  # STEM encoder, used by the worker thread only
    zero_block: np.ndarray | None = None  # silence that conceals gaps (worker thread)
    closed: bool = False
    counters: Counter = field(default_factory=Counter)
    # --- security (issue 10): per-direction keys, control-stream replay, input bound
    rx_key: bytes | Aead = b""  # client -> server (AUDIO, PING, BYE)
    ctl_replay: ReplayWindow = field(default_factory=lambda: ReplayWindow(64))  # PING, BYE
    ctl_seq: int = 0  # seq of the server's next PONG/BYE/ERROR
    budget: TokenBucket | None = None  # input rate bound (None: archival, queue-bounded)
    accept_resends: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    session: Session
    timestamp: int
    slot: int  # index into session.ring
    flags: int
    sent_ns: int  # the client's send time of this block, echoed on the STEM packets


class ServerCore:
    def __init__(self, *, card_stems: list[str], model_name: str, sample_rate: int,
                 channels: int, make_stream: Callable[[StreamRequest], StreamSetup],
                 psk: bytes = b"", max_sessions: int = 8, idle_timeout: float = 10.0,
                 secret: bytes | None = None, credential: Credential | None = None,
                 limits: LimitConfig | None = None) -> None:
        self.stems = list(card_stems)
        self.model_name = model_name
        self.sample_rate = sample_rate
        self.channels = channels
        self.make_stream = make_stream
        self.idle_timeout = idle_timeout
        self.secret = secret or secrets.token_bytes(32)
        # --- security (issue 10): root key (a passphrase is stretched once, here), limits
        self.credential = credential or Credential(passphrase=psk)
        self.salt = os.urandom(SALT_SIZE)
        self.root = self.credential.root(self.salt)
        self.limits = Limits(limits or LimitConfig(max_sessions=max_sessions))
        self.max_sessions = self.limits.config.max_sessions
        self.required_features = 0  # features a HELLO must ask for (serve --encrypt)
        self.used_cookies: dict[bytes, Session | None] = {}  # single use, until expiry
        self._cookie_expiry: deque[tuple[float, bytes]] = deque()
        self.totals: Counter = Counter()  # counters of closed sessions, summed (metrics)
        self.features = int(Features.NONE)  # optional features this server grants
        self.reorder_ms = 0  # input reorder window (ms), stated in ACCEPT
        self.sessions: dict[int, Session] = {}
        self.by_nonce: dict[tuple[Addr, bytes], Session] = {}
        self.counters: Counter = Counter()
        self.outbox: list[tuple[bytes, Addr]] = []
        self.jobs: list[Job] = []
        self.recent_ends: deque[tuple[int, str]] = deque(maxlen=256)  # (id, why)

    # ---------------------------------------------------------------- entry points
    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.counters["rx_datagrams"] += 1
        try:
            h = pk.decode_header(data)
        except pk.WireError as e:
            self._drop(e.reason)
            return
        self.counters[f"rx_{h.type.name.lower()}"] += 1
        try:
            if h.type is PacketType.HELLO:
                self._on_hello(h, data, addr, now)
            elif h.type in (PacketType.AUDIO, PacketType.PING, PacketType.BYE):
                self._on_session_packet(h, data, addr, now)
            else:
                self._drop("unexpected-type")
        except pk.WireError as e:
            self._drop(e.reason)
        except Exception:  # a bug must never take the receive loop down: drop, count, log
            self._drop("internal-error")
            log.exception("internal error on a datagram from %s (dropped)", _fmt(addr))

    def expire(self, now: float) -> list[Session]:
        gone = [s for s in self.sessions.values() if now - s.last_rx > self.idle_timeout]
        for s in gone:
            self.close(s, "timeout", now, notify=True)
        return gone

    def close(self, s: Session, why: str, now: float, notify: bool = False) -> None:
        if s.closed:
            return
        s.closed = True
        self.sessions.pop(s.id, None)
        self.by_nonce.pop((s.addr, s.client_nonce), None)
        if notify:
            reason = ByeReason.TIMEOUT if why == "timeout" else ByeReason.SHUTDOWN
            self._send_session(s, PacketType.BYE, pk.encode_bye(reason), now)
        c = s.counters
        self.totals.update(c)  # security (issue 10): metrics keep closed sessions' counts
        log.info(session_log_line(
            "session_end", s, reason=why, seconds=round(now - s.started, 1),
            audio=c["audio"], stem_packets=c["stem_packets"], dropped=c["dropped"],
            replay=c["replay"], late=c["late"], concealed_blocks=c["concealed_blocks"],
            overload=c["overload"], input_rate=c["input_rate"]))
        self.recent_ends.append((s.id, why))
        # free the per-session buffers now; the worker skips closed sessions
        s.ring = None
        s.setup = dataclasses.replace(s.setup, separator=None)

    def shutdown(self, now: float) -> None:
        for s in list(self.sessions.values()):
            self.close(s, "shutdown", now, notify=True)

    def take_outbox(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    def take_jobs(self) -> list[Job]:
        out, self.jobs = self.jobs, []
        return out

    # ---------------------------------------------------------------- handshake
    def _cookie(self, addr: Addr, nonce: bytes, t_ms: int) -> bytes:
        mac = hashlib.blake2s(_addr_bytes(addr) + nonce + t_ms.to_bytes(4, "big"),
                              key=self.secret, digest_size=COOKIE_SIZE - 4).digest()
        return t_ms.to_bytes(4, "big") + mac

    def _cookie_ok(self, cookie: bytes, addr: Addr, nonce: bytes, now: float) -> bool:
        t_ms = int.from_bytes(cookie[:4], "big")
        age_ms = (_ms(now) - t_ms) % (1 << 32)  # the ms clock wraps every 49 days
        if age_ms > COOKIE_LIFETIME_MS:
            return False
        return hmac.compare_digest(self._cookie(addr, nonce, t_ms), cookie)

    def _use_cookie(self, cookie: bytes, s: Session | None, now: float) -> None:
        """Remember a cookie until it expires: a second HELLO with it opens nothing."""
        self.used_cookies[cookie] = s
        self._cookie_expiry.append((now + COOKIE_LIFETIME_S + 1.0, cookie))
        while self._cookie_expiry and self._cookie_expiry[0][0] < now:
            self.used_cookies.pop(self._cookie_expiry.popleft()[1], None)

    def _on_hello(self, h: pk.Header, data: bytes, addr: Addr, now: float) -> None:
        if h.session != 0:
            return self._drop("hello-with-session")
        if not self.limits.allow_handshake(addr[0], now):
            return self._drop("handshake-rate")
        hello = pk.decode_hello(pk.payload(data, h))
        if hello.cookie == bytes(COOKIE_SIZE):
            # stateless: the reply is bound to the client's nonce and never larger than the
            # HELLO, so a spoofed source gets no amplification
            if not pk.check_tag(data, public_key()):
                return self._drop("bad-tag")
            reply = pk.encode(
                pk.Header(PacketType.COOKIE, 0, 0, 0, 0, h.send_time),
                pk.encode_cookie(self._cookie(addr, hello.nonce, _ms(now)), self.salt),
                cookie_key(hello.nonce))
            if len(reply) <= len(data):  # anti-amplification, by construction
                self.outbox.append((reply, addr))
                self.counters["cookies"] += 1
            return None
        if not self._cookie_ok(hello.cookie, addr, hello.nonce, now):
            return self._drop("bad-cookie")
        hk = handshake_keys(self.root, hello.nonce, self.salt)
        if not pk.check_tag(data, hk.c2s):
            return self._drop("bad-tag")
        if hello.cookie in self.used_cookies:
            s = self.used_cookies[hello.cookie]
            if s is not None and not s.closed and s.accept_resends < ACCEPT_RESENDS:
                # a retransmitted HELLO (our ACCEPT was lost): the same answer, no new state
                s.accept_resends += 1
                self.outbox.append((s.accept_packet, addr))
                self.counters["accept_resent"] += 1
                return None
            return self._drop("cookie-reused")
        if len(self.used_cookies) >= MAX_USED_COOKIES:
            return self._drop("cookie-table-full")
        self._use_cookie(hello.cookie, None, now)
        self.counters["accepted_hello"] += 1
        problem = self._check_request(hello)
        if not problem and hello.features & self.required_features != self.required_features:
            problem = "this server requires encryption: connect with --encrypt"
        if problem:
            return self._error(addr, h, ErrorCode.BAD_REQUEST, problem, hk.s2c)
        refused = self.limits.refuse_open(addr[0], [s.addr[0] for s in self.sessions.values()])
        if refused == "server-full":
            self.counters["refused_server_full"] += 1
            return self._error(addr, h, ErrorCode.SERVER_FULL,
                               f"server full ({self.max_sessions} sessions)", hk.s2c)
        if refused == "per-address":
            self.counters["refused_per_address"] += 1
            return self._error(addr, h, ErrorCode.ADDRESS_LIMIT,
                               f"too many sessions from {addr[0]} "
                               f"({self.limits.config.sessions_per_address})", hk.s2c)
        try:
            setup = self.make_stream(StreamRequest.from_hello(hello))
        except Exception as e:  # the engine refused the configuration
            return self._error(addr, h, ErrorCode.BAD_REQUEST, str(e)[:150], hk.s2c)
        self.used_cookies[hello.cookie] = self._open(hello, setup, addr, h, now, hk.s2c)
        return None

    def _check_request(self, hello: pk.Hello) -> str:
        if hello.block_frames not in BLOCK_FRAMES:
            return f"block of {hello.block_frames} frames; use one of {BLOCK_FRAMES}"
        if hello.format not in (SampleFormat.S16LE, SampleFormat.F32LE):
            return f"sample format {hello.format} is unknown"
        # HELLO's rate and channels describe the client's audio; ACCEPT names the model's,
        # which AUDIO must then use (the client converts)
        if not 1 <= hello.channels <= 2 or not 0 < hello.sample_rate <= 384000:
            return "channels must be 1 or 2 and the sample rate positive"
        if hello.block_frames * self.channels * SampleFormat(hello.format).width > 1024:
            return "block too large for one datagram; use fewer frames"
        if hello.preset != 0 and hello.preset not in PRESET_NAMES:
            return f"preset code {hello.preset} is unknown"
        if hello.synthesis != pk.DEFAULT and hello.synthesis not in SYNTHESIS_NAMES:
            return f"synthesis code {hello.synthesis} is unknown"
        return ""

    def _open(self, hello: pk.Hello, setup: StreamSetup, addr: Addr, h: pk.Header,
              now: float, accept_key: bytes) -> Session:
        sid = 0
        while sid == 0 or sid in self.sessions:
            sid = int.from_bytes(os.urandom(4), "big")
        snonce = os.urandom(16)
        granted = hello.features & self.features
        keys = session_keys(self.root, hello.nonce, snonce, sid,
                            encrypt=bool(granted & Features.ENCRYPT))
        accept = pk.Accept(self.sample_rate, hello.block_frames, self.channels, hello.format,
                           PRESET_CODES.get(setup.preset, 0), setup.hop_frames,
                           setup.lookahead, SYNTHESIS_CODES[setup.synthesis], setup.delay,
                           setup.synthesis_hop, setup.mask_hold,
                           granted, self.reorder_ms, snonce,
                           self.model_name,
                           tuple(self.stems))
        packet = pk.encode(pk.Header(PacketType.ACCEPT, 0, sid, 0, 0, h.send_time),
                           pk.encode_accept(accept), accept_key)
        s = Session(sid, addr, keys.s2c, hello.nonce, snonce, hello.block_frames,
                    self.channels, SampleFormat(hello.format), setup, packet, now, now)
        s.rx_key = keys.c2s
        s.budget = self.limits.input_budget(self.sample_rate, hello.block_frames,
                                            hello.playout_ms != pk.ARCHIVAL, now)
        # everything the session's hot path touches is allocated here, once
        s.ring = np.zeros((RING_BLOCKS, self.channels, hello.block_frames), np.float32)
        s.writer = pk.MediaWriter(hello.block_frames, self.channels, hello.format)
        s.zero_block = np.zeros((self.channels, hello.block_frames), np.float32)
        s.stem_seq = [0] * len(self.stems)
        self.sessions[sid] = s
        self.by_nonce[(addr, hello.nonce)] = s
        self.outbox.append((packet, addr))
        log.info(session_log_line(
            "session_start", s, preset=setup.preset, H=setup.hop_frames,
            L=setup.lookahead, synthesis=setup.synthesis, delay=setup.delay,
            delay_ms=round(1000 * setup.delay / self.sample_rate, 1),
            block=hello.block_frames, features=granted,
            encrypted=bool(granted & Features.ENCRYPT), key=self.credential.kind))
        return s

    def _error(self, addr: Addr, h: pk.Header, code: ErrorCode, msg: str,
               key: bytes | None = None) -> None:
        """ERROR, only ever to an address that proved itself: during the handshake (after
        the cookie) tagged with the handshake key bound to the client's nonce (`key`); for
        a session's packet, with the session's own key, on its control stream."""
        body = pk.encode_error(code, msg)
        s = self.sessions.get(h.session) if h.session else None
        if key is None:
            if s is None or s.addr != addr:
                return self._drop("error-without-key")
            self.outbox.append((pk.encode(
                pk.Header(PacketType.ERROR, 0, s.id, s.ctl_seq, 0, h.send_time), body,
                s.key), addr))
            s.ctl_seq = (s.ctl_seq + 1) & 0xFFFFFFFF
        else:
            self.outbox.append((pk.encode(
                pk.Header(PacketType.ERROR, 0, 0, 0, 0, h.send_time), body, key), addr))
        self.counters[f"error_{code.name.lower()}"] += 1
        return None

    # ---------------------------------------------------------------- sessions
    def _on_session_packet(self, h: pk.Header, data: bytes, addr: Addr, now: float) -> None:
        s = self.sessions.get(h.session)
        if s is None:
            return self._drop("unknown-session")
        if s.addr != addr:
            return self._drop("wrong-address")
        data = pk.open_packet(data, s.rx_key)  # WireError bad-tag; decrypted under AEAD
        if h.type is PacketType.AUDIO and not s.replay.check_and_mark(h.seq):
            return self._drop_session(s, "replay", "replay")
        # --- security (issue 10): control-stream replay window, input rate bound
        if h.type is not PacketType.AUDIO and not s.ctl_replay.check_and_mark(h.seq):
            return self._drop_session(s, "replay", "replay")
        if s.budget is not None and not s.budget.take(now):
            return self._drop_session(s, "input-rate", "input_rate")
        # ---
        self.counters[f"accepted_{h.type.name.lower()}"] += 1
        s.last_rx = now
        if h.type is PacketType.PING:
            self._send_session(s, PacketType.PONG, pk.encode_pong(h.send_time), now)
        elif h.type is PacketType.BYE:
            self.close(s, "bye", now)
        else:
            self._on_audio(s, h, data)
        return None

    def _on_audio(self, s: Session, h: pk.Header, data: bytes) -> None:
        if h.frames != s.block or h.channels != s.channels or h.format != s.format:
            return self._drop_session(s, "media-mismatch")
        if h.timestamp % s.block:
            return self._drop_session(s, "misaligned-timestamp")
        if h.timestamp < s.next_ts:
            return self._drop_session(s, "late", "late")
        if h.timestamp - s.next_ts > MAX_GAP_S * self.sample_rate:
            return self._drop_session(s, "timestamp-jump")
        if s.queued - s.taken >= MAX_PENDING:  # the worker is behind: drop, the worker conceals
            s.next_ts = h.timestamp + h.frames
            return self._drop_session(s, "overload", "overload")
        slot = s.ring_pos
        s.ring_pos = (slot + 1) % RING_BLOCKS
        pk.read_media(data, h, s.ring[slot])
        s.next_ts = h.timestamp + h.frames
        s.counters["audio"] += 1
        s.queued += 1
        self.jobs.append(Job(s, h.timestamp, slot, h.flags, h.send_time))
        return None

    def _send_session(self, s: Session, t: PacketType, body: bytes, now: float) -> None:
        # PONG, BYE and ERROR share the server's control stream: seq +1 each (replay window)
        self.outbox.append((pk.encode(pk.Header(t, 0, s.id, s.ctl_seq, 0, int(now * 1e9)),
                                      body, s.key), s.addr))
        s.ctl_seq = (s.ctl_seq + 1) & 0xFFFFFFFF

    def _drop(self, reason: str) -> None:
        self.counters["dropped"] += 1
        self.counters[f"drop_{reason}"] += 1

    def _drop_session(self, s: Session, reason: str, counter: str | None = None) -> None:
        """Drop a packet of a known session: counted globally and, for its log line, on it."""
        s.counters["dropped"] += 1
        if counter:
            s.counters[counter] += 1
        self._drop(reason)


def _addr_bytes(addr: Addr) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


def _ms(now: float) -> int:
    return int(now * 1000) & 0xFFFFFFFF


def session_log_line(event: str, s: Session, **fields: Any) -> str:
    """One structured (JSON) log line per session event, for operators' log pipelines."""
    return json.dumps({"event": event, "session": f"{s.id:08x}", "addr": s.addr[0],
                       "port": s.addr[1], **fields}, separators=(",", ":"))


def _fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"
