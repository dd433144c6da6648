"""Client protocol core, sans-IO: handshake state machine, packet encoding and decoding.

Feed it datagrams with `receive(data, now)`; it returns events. It never raises on a
datagram: anything malformed or unauthenticated is dropped and counted.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from enum import Enum

import numpy as np

from stemlink.errors import StemlinkError
from stemlink.wire import packets as pk
from stemlink.wire.auth import handshake_key, session_key
from stemlink.wire.constants import PRESET_CODES, SYNTHESIS_CODES, PacketType, SampleFormat


class ClientError(StemlinkError):
    """The server refused us, or never answered."""


class State(Enum):
    IDLE = 0
    HELLO_SENT = 1  # waiting for COOKIE
    COOKIE_SENT = 2  # HELLO with cookie sent, waiting for ACCEPT
    ESTABLISHED = 3
    CLOSED = 4


@dataclass(frozen=True, slots=True)
class Accepted:
    accept: pk.Accept
    session: int


@dataclass(frozen=True, slots=True)
class Rejected:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class StemBlock:
    header: pk.Header
    data: bytes  # the whole datagram; decode with wire.packets.read_media()


@dataclass(frozen=True, slots=True)
class Pong:
    rtt_ns: int


@dataclass(frozen=True, slots=True)
class ServerBye:
    reason: int


@dataclass(frozen=True, slots=True)
class SessionError:
    """The server ended an established session with an ERROR (protocol or server error)."""

    code: int
    message: str


class ClientCore:
    HELLO_RETRY_S = 0.25
    HELLO_TRIES = 12

    def __init__(self, *, sample_rate: int, channels: int, block: int = 256,
                 fmt: SampleFormat = SampleFormat.S16LE, preset: str | None = None,
                 hop_frames: int | None = None, lookahead: int | None = None,
                 synthesis: str | None = None, synthesis_hop: int | None = None,
                 mask_hold: int | None = None, features: int = 0, playout_ms: int = 0,
                 psk: bytes = b"",
                 first_seq: int = 0) -> None:
        self.sample_rate, self.channels, self.block, self.format = (
            sample_rate, channels, block, SampleFormat(fmt))
        self.preset_code = PRESET_CODES[preset] if preset else 0
        self.hop = pk.DEFAULT if hop_frames is None else hop_frames
        self.look = pk.DEFAULT if lookahead is None else lookahead
        self.syn = pk.DEFAULT if synthesis is None else SYNTHESIS_CODES[synthesis]
        self.synthesis_hop = synthesis_hop or 0  # 0 = the server's choice
        self.mask_hold = mask_hold or 0
        self.features = features
        self.playout_ms = playout_ms  # 0 = server default, pk.ARCHIVAL = no deadline
        self.psk = psk
        self.hkey = handshake_key(psk)
        self.nonce = os.urandom(16)
        self.state = State.IDLE
        self.session = 0
        self.key = b""
        self.accept: pk.Accept | None = None
        self.seq = first_seq & 0xFFFFFFFF
        self.counters: Counter = Counter()
        self._tries = 0
        self._last_hello = 0.0
        self._cookie = bytes(32)
        self._writer: pk.MediaWriter | None = None

    # ---------------------------------------------------------------- handshake
    def _hello(self, now: float) -> bytes:
        self._tries += 1
        self._last_hello = now
        hello = pk.Hello(self.nonce, self.sample_rate, self.block, self.channels, self.format,
                         self.preset_code, self.hop, self.look, self.syn, self.synthesis_hop,
                         self.mask_hold, self.features, self.playout_ms, self._cookie)
        return pk.encode(pk.Header(PacketType.HELLO, 0, 0, 0, 0, int(now * 1e9)),
                         pk.encode_hello(hello), self.hkey)

    def connect(self, now: float) -> bytes:
        self.state = State.HELLO_SENT
        return self._hello(now)

    def timer(self, now: float) -> bytes | None:
        """Call periodically during the handshake: a HELLO to retransmit, or None."""
        if self.state not in (State.HELLO_SENT, State.COOKIE_SENT):
            return None
        if now - self._last_hello < self.HELLO_RETRY_S:
            return None
        if self._tries >= self.HELLO_TRIES:
            self.state = State.CLOSED
            raise ClientError("no answer from the server (is it running, and is the address "
                              "and port right?)")
        return self._hello(now)

    def receive(self, data: bytes, now: float) -> list:
        try:
            h = pk.decode_header(data)
            return self._dispatch(h, data, now)
        except pk.WireError as e:
            self.counters["dropped"] += 1
            self.counters[f"drop_{e.reason}"] += 1
            return []

    def _dispatch(self, h: pk.Header, data: bytes, now: float) -> list:
        t = h.type
        if t is PacketType.STEM:
            if self.state is not State.ESTABLISHED or h.session != self.session:
                raise pk.WireError("unknown-session")
            if not pk.check_tag(data, self.key):
                raise pk.WireError("bad-tag")
            return [StemBlock(h, data)]
        if t is PacketType.ERROR and h.session != 0:
            if self.state is not State.ESTABLISHED or h.session != self.session:
                raise pk.WireError("unknown-session")
            if not pk.check_tag(data, self.key):
                raise pk.WireError("bad-tag")
            err = pk.decode_error(pk.payload(data, h))
            self.state = State.CLOSED
            return [SessionError(err.code, err.message)]
        if t in (PacketType.COOKIE, PacketType.ACCEPT, PacketType.ERROR):
            return self._handshake(h, data, now)
        if self.state is not State.ESTABLISHED or h.session != self.session:
            raise pk.WireError("unknown-session")
        if not pk.check_tag(data, self.key):
            raise pk.WireError("bad-tag")
        if t is PacketType.PONG:
            return [Pong(int(now * 1e9) - pk.decode_pong(pk.payload(data, h)))]
        if t is PacketType.BYE:
            self.state = State.CLOSED
            return [ServerBye(pk.decode_bye(pk.payload(data, h)))]
        raise pk.WireError("unexpected-type")

    def _handshake(self, h: pk.Header, data: bytes, now: float) -> list:
        if not pk.check_tag(data, self.hkey):
            raise pk.WireError("bad-tag")
        body = pk.payload(data, h)
        t = h.type
        if t is PacketType.COOKIE and self.state is State.HELLO_SENT:
            if len(body) != 32:
                raise pk.WireError("bad-cookie")
            self._cookie = bytes(body)
            self.state = State.COOKIE_SENT
            self._tries = 0
            return [("send", self._hello(now))]
        if t is PacketType.ACCEPT and self.state is State.COOKIE_SENT:
            acc = pk.decode_accept(body)
            self.accept, self.session = acc, h.session
            self.key = session_key(self.psk, self.nonce, acc.server_nonce, h.session)
            self.state = State.ESTABLISHED
            # the server names the rate and channels it separates; the client converts
            self.sample_rate, self.channels = acc.sample_rate, acc.channels
            self._writer = pk.MediaWriter(acc.block_frames, acc.channels, acc.format)
            return [Accepted(acc, h.session)]
        if t is PacketType.ERROR and self.state in (State.HELLO_SENT, State.COOKIE_SENT):
            err = pk.decode_error(body)
            self.state = State.CLOSED
            return [Rejected(err.code, err.message)]
        raise pk.WireError("unexpected-type")

    # ---------------------------------------------------------------- session packets
    def audio(self, block: np.ndarray, timestamp: int, now_ns: int, flags: int = 0) -> bytes:
        if self._writer is None:
            raise ClientError("not connected")
        d = self._writer.write(PacketType.AUDIO, block, session=self.session, seq=self.seq,
                               timestamp=timestamp, send_time=now_ns, key=self.key,
                               flags=flags)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return d

    def ping(self, now: float) -> bytes:
        return pk.encode(pk.Header(PacketType.PING, 0, self.session, 0, 0, int(now * 1e9)),
                         b"", self.key)

    def bye(self, now: float) -> bytes:
        self.state = State.CLOSED
        return pk.encode(pk.Header(PacketType.BYE, 0, self.session, 0, 0, int(now * 1e9)),
                         pk.encode_bye(), self.key)
