"""Server protocol core, sans-IO: datagrams and `now` in, datagrams and jobs out.

It validates, authenticates and routes packets; it never raises on a datagram: anything
malformed is dropped silently and counted by reason. Before an address has echoed a
cookie, the server sends it no more bytes than it received (COOKIE <= HELLO).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stemlink.conceal import DEFAULT_METHOD, Concealer
from stemlink.wire import packets as pk
from stemlink.wire.auth import handshake_key, session_key
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
    Flags,
    PacketType,
    SampleFormat,
)
from stemlink.wire.redundancy import RedundancyDecoder, RedundancyEncoder
from stemlink.wire.seq import ReplayWindow

log = logging.getLogger("stemlink.server")

Addr = tuple[Any, ...]
COOKIE_LIFETIME_S = 10
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
    key: bytes
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
    zero_block: np.ndarray | None = None  # scratch for a concealed input block (worker thread)
    concealer: Concealer | None = None  # conceals missing input blocks (worker thread)
    fec_in: RedundancyDecoder | None = None  # repairs AUDIO from parity (loop thread)
    fec_out: list[RedundancyEncoder] | None = None  # STEM parity per stem (worker thread)
    closed: bool = False
    counters: Counter = field(default_factory=Counter)


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
                 secret: bytes | None = None) -> None:
        self.stems = list(card_stems)
        self.model_name = model_name
        self.sample_rate = sample_rate
        self.channels = channels
        self.make_stream = make_stream
        self.psk = psk
        self.hkey = handshake_key(psk)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.secret = secret or secrets.token_bytes(32)
        self.features = int(Features.REDUNDANCY)  # optional features this server grants
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
        for s in self.sessions.values():  # blocks held for a parity that never came
            if s.fec_in is not None:
                for h, body in s.fec_in.poll(now):
                    self._queue_audio(s, h, body, 0)
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
        log.info(
            "session %08x %s ended (%s) after %.1f s: audio %d, stems %d, dropped %d "
            "(replay %d, late %d), concealed blocks %d, overload drops %d",
            s.id, _fmt(s.addr), why, now - s.started, c["audio"], c["stem_packets"],
            c["dropped"], c["replay"], c["late"], c["concealed_blocks"], c["overload"])
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
    def _cookie(self, addr: Addr, nonce: bytes, t: int) -> bytes:
        mac = hashlib.blake2s(_addr_bytes(addr) + nonce + t.to_bytes(4, "big"),
                              key=self.secret, digest_size=COOKIE_SIZE - 4).digest()
        return t.to_bytes(4, "big") + mac

    def _cookie_ok(self, cookie: bytes, addr: Addr, nonce: bytes, now: float) -> bool:
        t = int.from_bytes(cookie[:4], "big")
        age = int(now) - t
        if not 0 <= age <= COOKIE_LIFETIME_S:
            return False
        return hmac.compare_digest(self._cookie(addr, nonce, t), cookie)

    def _on_hello(self, h: pk.Header, data: bytes, addr: Addr, now: float) -> None:
        if h.session != 0:
            return self._drop("hello-with-session")
        if not pk.check_tag(data, self.hkey):
            return self._drop("bad-tag")
        hello = pk.decode_hello(pk.payload(data, h))
        if hello.cookie == bytes(COOKIE_SIZE):
            reply = pk.encode(
                pk.Header(PacketType.COOKIE, 0, 0, 0, 0, h.send_time),
                self._cookie(addr, hello.nonce, int(now)), self.hkey)
            if len(reply) <= len(data):  # anti-amplification, by construction
                self.outbox.append((reply, addr))
                self.counters["cookies"] += 1
            return None
        if not self._cookie_ok(hello.cookie, addr, hello.nonce, now):
            return self._drop("bad-cookie")
        existing = self.by_nonce.get((addr, hello.nonce))
        if existing is not None:  # a retransmitted HELLO: same answer
            self.outbox.append((existing.accept_packet, addr))
            return None
        problem = self._check_request(hello)
        if problem:
            return self._error(addr, h, ErrorCode.BAD_REQUEST, problem)
        if len(self.sessions) >= self.max_sessions:
            return self._error(addr, h, ErrorCode.SERVER_FULL,
                               f"server full ({self.max_sessions} sessions)")
        try:
            setup = self.make_stream(StreamRequest.from_hello(hello))
        except Exception as e:  # the engine refused the configuration
            return self._error(addr, h, ErrorCode.BAD_REQUEST, str(e)[:150])
        self._open(hello, setup, addr, h, now)
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
              now: float) -> None:
        sid = 0
        while sid == 0 or sid in self.sessions:
            sid = int.from_bytes(os.urandom(4), "big")
        snonce = os.urandom(16)
        key = session_key(self.psk, hello.nonce, snonce, sid)
        accept = pk.Accept(self.sample_rate, hello.block_frames, self.channels, hello.format,
                           PRESET_CODES.get(setup.preset, 0), setup.hop_frames,
                           setup.lookahead, SYNTHESIS_CODES[setup.synthesis], setup.delay,
                           setup.synthesis_hop, setup.mask_hold,
                           hello.features & self.features, self.reorder_ms, snonce,
                           self.model_name,
                           tuple(self.stems))
        packet = pk.encode(pk.Header(PacketType.ACCEPT, 0, sid, 0, 0, h.send_time),
                           pk.encode_accept(accept), self.hkey)
        s = Session(sid, addr, key, hello.nonce, snonce, hello.block_frames, self.channels,
                    SampleFormat(hello.format), setup, packet, now, now)
        # everything the session's hot path touches is allocated here, once
        s.ring = np.zeros((RING_BLOCKS, self.channels, hello.block_frames), np.float32)
        s.writer = pk.MediaWriter(hello.block_frames, self.channels, hello.format)
        s.zero_block = np.zeros((self.channels, hello.block_frames), np.float32)
        s.stem_seq = [0] * len(self.stems)
        s.concealer = Concealer(self.channels, hello.block_frames, DEFAULT_METHOD,
                                self.sample_rate)
        if hello.features & self.features & Features.REDUNDANCY:
            s.fec_in = RedundancyDecoder(hello.block_frames, ordered=True)
            s.fec_out = [RedundancyEncoder(hello.block_frames, s.writer.payload_len)
                         for _ in self.stems]
        self.sessions[sid] = s
        self.by_nonce[(addr, hello.nonce)] = s
        self.outbox.append((packet, addr))
        log.info("session %08x %s started: preset %s H=%d L=%d %s, D=%d samples (%.1f ms), "
                 "block %d", sid, _fmt(addr), setup.preset, setup.hop_frames, setup.lookahead,
                 setup.synthesis, setup.delay, 1000 * setup.delay / self.sample_rate,
                 hello.block_frames)

    def _error(self, addr: Addr, h: pk.Header, code: ErrorCode, msg: str) -> None:
        # only after the cookie proved the address, so a reply is not an amplifier
        self.outbox.append((pk.encode(pk.Header(PacketType.ERROR, 0, 0, 0, 0, h.send_time),
                                      pk.encode_error(code, msg), self.hkey), addr))
        self.counters[f"error_{code.name.lower()}"] += 1

    # ---------------------------------------------------------------- sessions
    def _on_session_packet(self, h: pk.Header, data: bytes, addr: Addr, now: float) -> None:
        s = self.sessions.get(h.session)
        if s is None:
            return self._drop("unknown-session")
        if s.addr != addr:
            return self._drop("wrong-address")
        if not pk.check_tag(data, s.key):
            return self._drop("bad-tag")
        if h.type is PacketType.AUDIO and not s.replay.check_and_mark(h.seq):
            return self._drop_session(s, "replay", "replay")
        s.last_rx = now
        if h.type is PacketType.PING:
            self._send_session(s, PacketType.PONG, pk.encode_pong(h.send_time), now)
        elif h.type is PacketType.BYE:
            self.close(s, "bye", now)
        else:
            self._on_audio(s, h, data, now)
        return None

    def _on_audio(self, s: Session, h: pk.Header, data: bytes, now: float = 0.0) -> None:
        if h.frames != s.block or h.channels != s.channels or h.format != s.format:
            return self._drop_session(s, "media-mismatch")
        if s.fec_in is not None:  # redundancy: parity repairs single losses; in order
            if h.timestamp % s.block:
                return self._drop_session(s, "misaligned-timestamp")
            for h2, body in s.fec_in.feed(h, pk.payload(data, h), now):
                self._queue_audio(s, h2, body, 0)
            return None
        if h.flags & Flags.REDUNDANT:
            return self._drop_session(s, "redundancy-not-granted")
        return self._queue_audio(s, h, data, pk.HEADER_SIZE)

    def _queue_audio(self, s: Session, h: pk.Header, data: bytes | memoryview,
                     offset: int) -> None:
        """One input block, in order, to the worker (offset: where its PCM starts)."""
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
        pk.read_media(data, h, s.ring[slot], offset)
        s.next_ts = h.timestamp + h.frames
        s.counters["audio"] += 1
        s.queued += 1
        self.jobs.append(Job(s, h.timestamp, slot, h.flags, h.send_time))
        return None

    def _send_session(self, s: Session, t: PacketType, body: bytes, now: float) -> None:
        self.outbox.append((pk.encode(pk.Header(t, 0, s.id, 0, 0, int(now * 1e9)), body,
                                      s.key), s.addr))

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
