"""Server protocol core, sans-IO: datagrams and `now` in; datagrams and worker messages
out; `next_timer()`/`on_timer(now)` for the reorder windows and idle timeouts.

It validates, authenticates and routes packets; it never raises on a datagram: anything
malformed is dropped silently and counted by reason. Before an address has echoed a
cookie, the server sends it no more bytes than it received (COOKIE <= HELLO). Cookies are
single-use and live exactly COOKIE_LIFETIME_MS; admission limits live in limits.py.

Ownership: a Session (below) is the network side of a session and belongs to the event
loop; its Stream (separator, STEM encoder) is handed to the worker in an OpenStream
message at the start and never touched here again. The two share only the session's
InputRing (single producer, single consumer). The worker's results come back through
`deliver()`, `stream_failed()` and `stream_released()`, called on the loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stemlink.udp_server.limits import LimitConfig, Limits, TokenBucket
from stemlink.udp_server.reorder import Released as Arrived
from stemlink.udp_server.reorder import ReorderBuffer
from stemlink.udp_server.ring import InputRing
from stemlink.udp_server.stream import Job, Stream, playout_seconds
from stemlink.udp_server.worker import CloseStream, Message, OpenStream
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
    HEADER_SIZE,
    PRESET_CODES,
    PRESET_NAMES,
    SYNTHESIS_CODES,
    SYNTHESIS_NAMES,
    ByeReason,
    ErrorCode,
    Features,
    Flags,
    PacketType,
    SampleFormat,
)
from stemlink.wire.redundancy import UPLINK, RedundancyDecoder, datagrams_per_block
from stemlink.wire.seq import ReplayWindow, seq_diff, seq_gt

log = logging.getLogger("stemlink.server")

Addr = tuple[Any, ...]
COOKIE_LIFETIME_MS = 10_000  # exact: issue times are milliseconds
COOKIE_LIFETIME_S = COOKIE_LIFETIME_MS / 1000
ACCEPT_RESENDS = 12  # answers to retransmitted HELLOs per session (the client's tries)
MAX_USED_COOKIES = 65536  # single-use memory; beyond it new handshakes wait (counted)
REORDER_MS = 10.0  # default input reorder window: > one 256-frame block (5.8 ms) + jitter
PLAYOUT_MS = 200.0  # default playout budget for clients that state none
PENDING_S = 1.0  # per-session bound on input waiting for the worker, in audio time
ARCHIVAL_SLACK_S = 1.0  # archival sessions' blocks are due this long after arrival
CLOCK_WINDOW_S = 1.0  # the media clock follows the least-delayed arrival of this window
RESTART_BEHIND_S = 1.0  # a fresh packet this far behind the timeline restarts the stream


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


class MediaClock:
    """Maps a session's media timestamps to the server clock: when a block should have
    arrived had it met no queueing, i.e. the least-delayed arrival of the last
    CLOCK_WINDOW_S (so a sender that stalls once is followed after that window)."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self._win: deque[tuple[float, float]] = deque()  # (arrival, offset), offset rising

    def observe(self, end_ts: int, arrival: float) -> None:
        off = arrival - end_ts / self.rate
        while self._win and self._win[-1][1] >= off:
            self._win.pop()
        self._win.append((arrival, off))
        while self._win[0][0] < arrival - CLOCK_WINDOW_S:
            self._win.popleft()

    def due(self, end_ts: int) -> float:
        return self._win[0][1] + end_ts / self.rate

    def reset(self) -> None:
        self._win.clear()


@dataclass(eq=False)  # compared and hashed by identity (kept in sets)
class Session:
    """The network side of a session: owned by the event loop."""

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
    ring: InputRing
    reorder: ReorderBuffer
    clock: MediaClock
    playout_s: float  # client's playout budget; inf = archival
    replay: ReplayWindow = field(default_factory=lambda: ReplayWindow(256))
    top_ts: int = -1  # the newest media timestamp of an accepted AUDIO datagram
    fec_in: RedundancyDecoder | None = None  # redundancy granted: repairs AUDIO from parity
    closed: bool = False
    counters: Counter = field(default_factory=Counter)
    # --- security (issue 10): per-direction keys, control-stream replay, input bound
    rx_key: bytes | Aead = b""  # client -> server (AUDIO, PING, BYE)
    ctl_replay: ReplayWindow = field(default_factory=lambda: ReplayWindow(64))  # PING, BYE
    ctl_seq: int = 0  # seq of the server's next PONG/BYE/ERROR
    budget: TokenBucket | None = None  # input rate bound (None: archival, queue-bounded)
    block_budget: TokenBucket | None = None  # with redundancy: the same bound on blocks
    accept_resends: int = 0

    @property
    def archival(self) -> bool:
        return self.playout_s == float("inf")


class ServerCore:
    def __init__(self, *, card_stems: list[str], model_name: str, sample_rate: int,
                 channels: int, make_stream: Callable[[StreamRequest], StreamSetup],
                 psk: bytes = b"", max_sessions: int = 8, idle_timeout: float = 10.0,
                 secret: bytes | None = None, reorder_ms: float = REORDER_MS,
                 playout_ms: float = PLAYOUT_MS, credential: Credential | None = None,
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
        self.features = int(Features.REDUNDANCY)  # optional features this server grants
        self.reorder_ms = reorder_ms  # input reorder window, stated in ACCEPT
        self.playout_ms = playout_ms
        self.sessions: dict[int, Session] = {}
        self.by_nonce: dict[tuple[Addr, bytes], Session] = {}
        self.counters: Counter = Counter()
        self.outbox: list[tuple[bytes, Addr]] = []
        self.messages: list[Message] = []  # for the worker, in order
        self.recent_ends: deque[tuple[int, str]] = deque(maxlen=256)  # (id, why)
        self.stream_counters: Counter = Counter()  # worker-side totals of ended streams
        self._ending: dict[int, tuple[Session, str, float]] = {}  # closed, worker not done
        self._waiting: set[Session] = set()  # sessions whose reorder window holds blocks
        pk.check_accept_fits(model_name, self.stems)  # refused at load, not at HELLO

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

    def next_timer(self) -> float | None:
        """The earliest moment on_timer() has work: a reorder window running out. Only
        sessions holding blocks are looked at (one set, kept by _to_worker)."""
        t = None
        for s in self._waiting:
            d = s.reorder.deadline()
            if d is not None and (t is None or d < t):
                t = d
        return t

    def on_timer(self, now: float) -> None:
        for s in list(self._waiting):
            self._to_worker(s, s.reorder.poll(now))

    def close(self, s: Session, why: str, now: float, notify: bool = False,
              error: tuple[ErrorCode, str] | None = None) -> None:
        """End a session: forget it here, tell the client (BYE or ERROR) and the worker.
        Its STEM packets still in flight are dropped by deliver()."""
        if s.closed:
            return
        s.closed = True
        self._waiting.discard(s)
        self.sessions.pop(s.id, None)
        self.by_nonce.pop((s.addr, s.client_nonce), None)
        if error is not None:
            self._send_session(s, PacketType.ERROR, pk.encode_error(*error), now)
        elif notify:
            reason = ByeReason.TIMEOUT if why == "timeout" else ByeReason.SHUTDOWN
            self._send_session(s, PacketType.BYE, pk.encode_bye(reason), now)
        self.recent_ends.append((s.id, why))
        self._ending[s.id] = (s, why, now)
        self.messages.append(CloseStream(s.id))

    def shutdown(self, now: float) -> None:
        for s in list(self.sessions.values()):
            self.close(s, "shutdown", now, notify=True)

    def take_outbox(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    def take_messages(self) -> list[Message]:
        out, self.messages = self.messages, []
        return out

    # ---------------------------------------------------------------- worker results
    def deliver(self, session: int, datagrams: list[bytes]) -> None:
        """STEM datagrams from the worker: sent only while the session is open."""
        s = self.sessions.get(session)
        if s is None:
            self.counters["stem_after_close"] += len(datagrams)
            return
        s.counters["stem_packets"] += len(datagrams)
        for d in datagrams:
            self.outbox.append((d, s.addr))

    def stream_failed(self, session: int, message: str, counters: dict, now: float) -> None:
        s = self.sessions.get(session)
        self.counters["stream_failures"] += 1
        if s is not None:
            self.close(s, "error", now, error=(ErrorCode.INTERNAL, message))
        self.stream_released(session, counters)

    def stream_released(self, session: int, counters: dict) -> None:
        """The worker let the stream go: log the session's end with both sides' counts."""
        ending = self._ending.pop(session, None)
        self.stream_counters.update(counters)
        if ending is None:
            return
        s, why, now = ending
        c, w = s.counters, counters
        log.info(session_log_line(
            "session_end", s, reason=why, seconds=round(now - s.started, 1),
            audio=c["audio"], stem_packets=c["stem_packets"], dropped=c["dropped"],
            replay=c["replay"], late=c["late"], overload=c["overload"],
            input_rate=c["input_rate"], reorder_gaps=s.reorder.gaps, restarts=c["restarts"],
            inferences=w.get("inferences", 0), skipped=w.get("skipped_inferences", 0),
            concealed_input_blocks=w.get("concealed_input_blocks", 0),
            gaps_jumped=w.get("gap_jumps", 0), concealed_blocks=w.get("concealed_blocks", 0),
            stale_blocks=w.get("stale_blocks", 0)))

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
        key = keys.s2c  # the worker seals STEM packets with it
        accept = pk.Accept(self.sample_rate, hello.block_frames, self.channels, hello.format,
                           PRESET_CODES.get(setup.preset, 0), setup.hop_frames,
                           setup.lookahead, SYNTHESIS_CODES[setup.synthesis], setup.delay,
                           setup.synthesis_hop, setup.mask_hold,
                           granted, math.ceil(self.reorder_ms), snonce,
                           self.model_name,
                           tuple(self.stems))
        packet = pk.encode(pk.Header(PacketType.ACCEPT, 0, sid, 0, 0, h.send_time),
                           pk.encode_accept(accept), accept_key)
        playout_s = playout_seconds(hello.playout_ms, self.playout_ms)
        # everything the session's hot path touches is allocated here, once
        ring = InputRing(self.channels, hello.block_frames, PENDING_S, self.sample_rate)
        wait_s = self.reorder_ms / 1000.0
        horizon = max(2, math.ceil(2 * wait_s * self.sample_rate / hello.block_frames))
        s = Session(sid, addr, key, hello.nonce, snonce, hello.block_frames, self.channels,
                    SampleFormat(hello.format), setup, packet, now, now, ring,
                    ReorderBuffer(hello.block_frames, wait_s, horizon),
                    MediaClock(self.sample_rate), playout_s)
        s.rx_key = keys.c2s
        redundancy = bool(hello.features & self.features & Features.REDUNDANCY)
        realtime = hello.playout_ms != pk.ARCHIVAL
        s.budget = self.limits.input_budget(self.sample_rate, hello.block_frames, realtime,
                                            now, datagrams_per_block(UPLINK) if redundancy
                                            else 1.0)
        if redundancy:
            # blocks (received or repaired) at the rate of a plain session
            s.block_budget = self.limits.input_budget(self.sample_rate, hello.block_frames,
                                                      realtime, now)
            # repaired blocks join the reorder window like arrivals
            s.fec_in = RedundancyDecoder(hello.block_frames)
        self.messages.append(OpenStream(Stream(
            session=sid, key=key, separator=setup.separator, ring=ring,
            block=hello.block_frames, channels=self.channels, fmt=SampleFormat(hello.format),
            n_stems=len(self.stems), sample_rate=self.sample_rate, playout_s=playout_s,
            redundancy=redundancy)))
        s.setup = dataclasses.replace(setup, separator=None)  # the worker's from now on
        self.sessions[sid] = s
        self.by_nonce[(addr, hello.nonce)] = s
        self.outbox.append((packet, addr))
        log.info(session_log_line(
            "session_start", s, preset=setup.preset, H=setup.hop_frames,
            L=setup.lookahead, synthesis=setup.synthesis, delay=setup.delay,
            delay_ms=round(1000 * setup.delay / self.sample_rate, 1),
            block=hello.block_frames, reorder_ms=self.reorder_ms,
            playout_ms="archival" if s.archival else round(1000 * playout_s),
            features=granted, encrypted=bool(granted & Features.ENCRYPT),
            key=self.credential.kind))
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
        if h.type is PacketType.AUDIO:
            fresh = s.replay.top is None or seq_gt(h.seq, s.replay.top)
            if not s.replay.check_and_mark(h.seq):
                if not (h.timestamp > s.top_ts and
                        -seq_diff(h.seq, s.replay.top) >= s.replay.size):
                    return self._drop_session(s, "replay", "replay")
                # Far behind the window yet newer media than anything accepted: no replay
                # (a copy carries its old timestamp) but an authentic sender whose seq
                # jumped (a client bug); follow it, or the session would be wedged.
                s.replay = ReplayWindow(s.replay.size)
                s.replay.check_and_mark(h.seq)
                s.counters["seq_resyncs"] += 1
                fresh = True
            s.top_ts = max(s.top_ts, h.timestamp)
        # --- security (issue 10): control-stream replay window, input rate bound
        elif not s.ctl_replay.check_and_mark(h.seq):
            return self._drop_session(s, "replay", "replay")
        if s.budget is not None and not s.budget.take(now):
            return self._drop_session(s, "input-rate", "input_rate")
        self.counters[f"accepted_{h.type.name.lower()}"] += 1
        # ---
        if h.type is PacketType.AUDIO:
            self._on_audio(s, h, data, fresh, now)
            return None
        s.last_rx = now  # only packets that passed every check refresh the session
        if h.type is PacketType.PING:
            self._send_session(s, PacketType.PONG, pk.encode_pong(h.send_time), now)
        elif h.type is PacketType.BYE:
            self.close(s, "bye", now)
        return None

    def _on_audio(self, s: Session, h: pk.Header, data: bytes, fresh: bool,
                  now: float) -> None:
        if h.frames != s.block or h.channels != s.channels or h.format != s.format:
            return self._protocol_error(s, "media-mismatch", now,
                                        "AUDIO block differs from the negotiated format")
        if h.timestamp % s.block:
            return self._protocol_error(s, "misaligned-timestamp", now,
                                        "AUDIO timestamp is not a multiple of the block")
        s.last_rx = now
        if s.fec_in is not None:  # redundancy: parity repairs single losses (wire.redundancy)
            for h2, body in s.fec_in.feed(h, pk.payload(data, h), fresh):
                # the datagram bound lets twice the datagrams in; blocks stay bound to the
                # rate a session without redundancy gets (data-only sending gains nothing)
                if s.block_budget is not None and not s.block_budget.take(now):
                    self._drop_session(s, "input-rate", "input_rate")
                    continue
                repaired = h2 is not h
                if repaired:
                    s.counters["repaired"] += 1
                self._accept_audio(s, h2, bytes(HEADER_SIZE) + body if repaired else data,
                                   fresh and not repaired, now)
            return None
        if h.flags & Flags.REDUNDANT:
            return self._drop_session(s, "redundancy-not-granted")
        return self._accept_audio(s, h, data, fresh, now)

    def _accept_audio(self, s: Session, h: pk.Header, data: bytes, fresh: bool,
                      now: float) -> None:
        s.counters["audio"] += 1
        arrived = Arrived(h.timestamp, h.flags, h.send_time, now, (h, data))
        out, verdict = s.reorder.push(arrived, now)
        if verdict == "late" and fresh and (
                s.reorder.next_ts - h.timestamp > RESTART_BEHIND_S * self.sample_rate):
            # a packet newer than any before, far behind the timeline: the sender started
            # over; follow it rather than dropping it and everything after it for good
            out = s.reorder.restart(h.timestamp)
            out2, verdict = s.reorder.push(dataclasses.replace(arrived, restart=True), now)
            out += out2
            s.clock.reset()
            s.counters["restarts"] += 1
        if verdict:
            self._drop_session(s, verdict, verdict)
            return None
        s.clock.observe(h.timestamp + h.frames, now)
        self._to_worker(s, out)
        return None

    def _to_worker(self, s: Session, released: list[Arrived]) -> None:
        """Blocks leave the reorder window in order: decode each into the ring, hand the
        worker a job for it. A full ring (the worker is PENDING_S behind) drops the block,
        which the worker then conceals like a lost one."""
        if s.reorder.held and not s.closed:
            self._waiting.add(s)
        else:
            self._waiting.discard(s)
        for r in released:
            h, data = r.packet
            if s.ring.free() == 0:
                self._drop_session(s, "overload", "overload")
                continue
            slot = s.ring.claim()
            pk.read_media(data, h, s.ring.blocks[slot])
            s.ring.commit()
            due = (r.arrival + ARCHIVAL_SLACK_S if s.archival
                   else s.clock.due(r.timestamp + s.block))
            self.messages.append(Job(s.id, r.timestamp, slot, r.flags, r.sent_ns, due,
                                     r.restart))

    def _protocol_error(self, s: Session, reason: str, now: float, message: str) -> None:
        self._drop_session(s, reason)
        self.close(s, "protocol-error", now, error=(ErrorCode.PROTOCOL, message))

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


def _fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def _ms(now: float) -> int:
    return int(now * 1000) & 0xFFFFFFFF


def session_log_line(event: str, s: Session, **fields: Any) -> str:
    """One structured (JSON) log line per session event, for operators' log pipelines."""
    return json.dumps({"event": event, "session": f"{s.id:08x}", "addr": s.addr[0],
                       "port": s.addr[1], **fields}, separators=(",", ":"))


def _fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"
