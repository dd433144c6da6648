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
from stemlink.wire.auth import (
    Aead,
    Credential,
    HandshakeKeys,
    aead_available,
    cookie_key,
    handshake_keys,
    public_key,
    session_keys,
)
from stemlink.wire.constants import (
    HEADER_SIZE,
    PRESET_CODES,
    SYNTHESIS_CODES,
    Features,
    Flags,
    PacketType,
    SampleFormat,
)
from stemlink.wire.redundancy import UPLINK, RedundancyDecoder, RedundancyEncoder
from stemlink.wire.seq import ReplayWindow, seq_gt

NO_ANSWER = ("no answer from the server (is it running, are the address and port right, "
             "does a firewall drop UDP? A server that rate-limits handshakes from this "
             "address also stays silent for a while)")
NO_ACCEPT = ("the server answered but did not accept the handshake: most likely a wrong key "
             "(the same --key-file or --psk must be given to serve and to this client), or "
             "a server that allows no more handshakes from this address right now")


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
class SessionError:
    """The server ended an established session with an ERROR (protocol or server error)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class StemBlock:
    header: pk.Header
    data: bytes  # the whole datagram; decode with wire.packets.read_media(data, header, out)
    recovered: bool = False  # repaired from redundancy (never sent as such)


@dataclass(frozen=True, slots=True)
class Pong:
    rtt_ns: int


@dataclass(frozen=True, slots=True)
class ServerBye:
    reason: int


class ClientCore:
    HELLO_RETRY_S = 0.25
    HELLO_TRIES = 12

    def __init__(self, *, sample_rate: int, channels: int, block: int = 256,
                 fmt: SampleFormat = SampleFormat.S16LE, preset: str | None = None,
                 hop_frames: int | None = None, lookahead: int | None = None,
                 synthesis: str | None = None, synthesis_hop: int | None = None,
                 mask_hold: int | None = None, features: int = 0, playout_ms: int = 0,
                 psk: bytes = b"", key: bytes = b"", encrypt: bool = False,
                 first_seq: int = 0) -> None:
        self.sample_rate, self.channels, self.block, self.format = (
            sample_rate, channels, block, SampleFormat(fmt))
        self.preset_code = PRESET_CODES[preset] if preset else 0
        self.hop = pk.DEFAULT if hop_frames is None else hop_frames
        self.look = pk.DEFAULT if lookahead is None else lookahead
        self.syn = pk.DEFAULT if synthesis is None else SYNTHESIS_CODES[synthesis]
        self.synthesis_hop = synthesis_hop or 0  # 0 = the server's choice
        self.mask_hold = mask_hold or 0
        if encrypt and not aead_available():
            raise ClientError("--encrypt needs the `cryptography` package: "
                              "pip install 'stemlink[encrypt]'")
        self.encrypt = encrypt
        self.features = features | (Features.ENCRYPT if encrypt else 0)
        self.playout_ms = playout_ms  # 0 = server default, pk.ARCHIVAL = no deadline
        self.credential = Credential(key=key, passphrase=psk)
        self.nonce = os.urandom(16)
        self.state = State.IDLE
        self.session = 0
        self.key: bytes | Aead = b""  # client -> server session key (AUDIO, PING, BYE)
        self.rx_key: bytes | Aead = b""  # server -> client (STEM, PONG, BYE, ERROR)
        self.ctl_seq = 0  # seq of our next PING/BYE (the server keeps a replay window)
        self.ctl_replay = ReplayWindow(64)  # on the server's PONG/BYE/ERROR
        self._hk: HandshakeKeys | None = None  # after the COOKIE
        self._roots: dict[bytes, bytes] = {}  # salt -> root key (scrypt is slow)
        self._root = b""
        self.accept: pk.Accept | None = None
        self.seq = first_seq & 0xFFFFFFFF
        self.counters: Counter = Counter()
        self._tries = 0
        self._last_hello = 0.0
        self._cookie = bytes(32)
        self._writer: pk.MediaWriter | None = None
        self._fec_up: RedundancyEncoder | None = None
        self._fec_down: dict[int, RedundancyDecoder] = {}
        self._stem_top: dict[int, int] = {}  # per stem: the newest seq heard (authentic)
        self.granted = 0  # features the server granted

    @property
    def redundancy(self) -> bool:
        return bool(self.granted & Features.REDUNDANCY)

    # ---------------------------------------------------------------- handshake
    def _hello(self, now: float) -> bytes:
        self._tries += 1
        self._last_hello = now
        hello = pk.Hello(self.nonce, self.sample_rate, self.block, self.channels, self.format,
                         self.preset_code, self.hop, self.look, self.syn, self.synthesis_hop,
                         self.mask_hold, self.features, self.playout_ms, self._cookie)
        key = public_key() if self._hk is None else self._hk.c2s
        return pk.encode(pk.Header(PacketType.HELLO, 0, 0, 0, 0, int(now * 1e9)),
                         pk.encode_hello(hello), key)

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
            waited_for_accept = self.state is State.COOKIE_SENT
            self.state = State.CLOSED
            raise ClientError(NO_ACCEPT if waited_for_accept else NO_ANSWER)
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
            data = pk.open_packet(data, self.rx_key)  # WireError bad-tag; decrypted (AEAD)
            if not self.redundancy:
                if h.flags & Flags.REDUNDANT:
                    raise pk.WireError("redundancy-not-granted")
                return [StemBlock(h, data)]
            dec = self._fec_down.get(h.stem)
            if dec is None:
                if h.stem >= len(self.accept.stems) or h.frames != self.accept.block_frames:
                    raise pk.WireError("bad-stem-block")
                dec = self._fec_down[h.stem] = RedundancyDecoder(h.frames)
            top = self._stem_top.get(h.stem)
            fresh = top is None or seq_gt(h.seq, top)
            if fresh:
                self._stem_top[h.stem] = h.seq
            out = []
            for h2, body in dec.feed(h, pk.payload(data, h), fresh):
                if h2 is h:
                    out.append(StemBlock(h, data))
                else:  # repaired: a datagram-shaped copy so read_media() reads it alike
                    self.counters["recovered"] += 1
                    out.append(StemBlock(h2, bytes(HEADER_SIZE) + body, recovered=True))
            return out
        if t in (PacketType.COOKIE, PacketType.ACCEPT) or (
                t is PacketType.ERROR and self.state is not State.ESTABLISHED):
            return self._handshake(h, data, now)
        if self.state is not State.ESTABLISHED or h.session != self.session:
            raise pk.WireError("unknown-session")
        data = pk.open_packet(data, self.rx_key)
        if t not in (PacketType.PONG, PacketType.BYE, PacketType.ERROR):
            raise pk.WireError("unexpected-type")
        if not self.ctl_replay.check_and_mark(h.seq):  # a replayed PONG, BYE or ERROR
            raise pk.WireError("replay")
        if t is PacketType.PONG:
            return [Pong(int(now * 1e9) - pk.decode_pong(pk.payload(data, h)))]
        self.state = State.CLOSED
        if t is PacketType.BYE:
            return [ServerBye(pk.decode_bye(pk.payload(data, h)))]
        err = pk.decode_error(pk.payload(data, h))
        return [SessionError(err.code, err.message)]

    def _handshake(self, h: pk.Header, data: bytes, now: float) -> list:
        body = pk.payload(data, h)
        t = h.type
        if t is PacketType.COOKIE and self.state is State.HELLO_SENT:
            pk.open_packet(data, cookie_key(self.nonce))  # bound to our nonce
            cookie, salt = pk.decode_cookie(body)
            root = self._roots.get(salt)
            if root is None:
                root = self._roots[salt] = self.credential.root(salt)
            self._cookie, self._hk = cookie, handshake_keys(root, self.nonce, salt)
            self._root = root
            self.state = State.COOKIE_SENT
            self._tries = 0
            return [("send", self._hello(now))]
        if self.state is not State.COOKIE_SENT or self._hk is None:
            raise pk.WireError("unexpected-type")
        pk.open_packet(data, self._hk.s2c)  # bound to our nonce and the key
        if t is PacketType.ACCEPT:
            acc = pk.decode_accept(body)
            self.accept, self.session = acc, h.session
            keys = session_keys(self._root, self.nonce, acc.server_nonce, h.session,
                                encrypt=bool(acc.features & Features.ENCRYPT))
            self.key, self.rx_key = keys.c2s, keys.s2c
            self.state = State.ESTABLISHED
            # the server names the rate and channels it separates; the client converts
            self.sample_rate, self.channels = acc.sample_rate, acc.channels
            self._writer = pk.MediaWriter(acc.block_frames, acc.channels, acc.format)
            self.granted = acc.features & self.features
            if self.encrypt and not acc.features & Features.ENCRYPT:
                return [("send", self.bye(now)),
                        Rejected(0, "the server does not offer encryption (it needs the "
                                    "`cryptography` package: pip install 'stemlink[server]')")]
            if self.redundancy:
                # the uplink is covered twice: an input block lost beyond repair costs
                # more than a stem block (wire.redundancy)
                self._fec_up = RedundancyEncoder(acc.block_frames, self._writer.payload_len,
                                                 UPLINK)
            return [Accepted(acc, h.session)]
        if t is PacketType.ERROR:
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

    def audio_datagrams(self, block: np.ndarray, timestamp: int, now_ns: int,
                        flags: int = 0) -> list[bytes]:
        """The AUDIO datagram for a block, and (redundancy granted) the parity
        datagrams due after it: one per block, two after the last (wire.redundancy)."""
        d = self.audio(block, timestamp, now_ns, flags)
        if self._fec_up is None:
            return [d]
        out = [d]
        w = self._writer
        for ts, body, pflags in self._fec_up.add(
                timestamp, memoryview(d)[HEADER_SIZE:HEADER_SIZE + w.payload_len],
                bool(flags & Flags.LAST)):
            out.append(pk.encode(pk.Header(PacketType.AUDIO, pflags, self.session, self.seq,
                                           ts, now_ns, w.frames, w.channels, w.format),
                                 body, self.key))
            self.seq = (self.seq + 1) & 0xFFFFFFFF
        return out

    @property
    def parities_sent(self) -> int:
        return self._fec_up.parities if self._fec_up is not None else 0

    def _control(self, t: PacketType, body: bytes, now: float) -> bytes:
        # PING and BYE share the client's control stream: seq +1 each (replay window)
        d = pk.encode(pk.Header(t, 0, self.session, self.ctl_seq, 0, int(now * 1e9)), body,
                      self.key)
        self.ctl_seq = (self.ctl_seq + 1) & 0xFFFFFFFF
        return d

    def ping(self, now: float) -> bytes:
        return self._control(PacketType.PING, b"", now)

    def bye(self, now: float) -> bytes:
        self.state = State.CLOSED
        return self._control(PacketType.BYE, pk.encode_bye(), now)
