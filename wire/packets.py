"""Packet layout v2: a 36-byte header (network byte order), a payload, a 16-byte tag.

Every decode checks bounds and ranges and raises WireError (with a short `reason` slug
for counters) on anything malformed; it never raises anything else on arbitrary bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from stemlink.errors import StemlinkError
from stemlink.wire import auth
from stemlink.wire.constants import (
    BLOCK_FRAMES,
    COOKIE_SIZE,
    HEADER_SIZE,
    KNOWN_FEATURES,
    MAGIC,
    MAX_CHANNELS,
    MAX_NAME,
    MAX_PAYLOAD,
    MAX_STEMS,
    NONCE_SIZE,
    TAG_SIZE,
    VERSION,
    ByeReason,
    ErrorCode,
    Flags,
    PacketType,
    SampleFormat,
)


class WireError(StemlinkError):
    """A datagram that is not a valid stemlink v1 packet."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_HEADER = struct.Struct(">HBBBBBBIIQQHH")
assert _HEADER.size == HEADER_SIZE
_HELLO = struct.Struct(f">{NONCE_SIZE}sIHBBBBBBHBBH{COOKIE_SIZE}s")
_ACCEPT = struct.Struct(f">IHBBBBBBBIHBBH{NONCE_SIZE}s")
_PONG = struct.Struct(">Q")
_BYE = struct.Struct(">B")
_ERROR = struct.Struct(">HB")
_KNOWN_FLAGS = int(Flags.CONCEALED | Flags.REDUNDANT | Flags.LAST)
_MEDIA = (PacketType.AUDIO, PacketType.STEM)
_TYPES = (None, *PacketType)  # _TYPES[code] is PacketType(code) for 1..len(PacketType)
assert all(_TYPES[t] == t for t in PacketType)
_WIDTH = (0, SampleFormat.S16LE.width, SampleFormat.F32LE.width)  # bytes per sample by code
_S16_SCALE = 32768.0  # s16 = round(x * 32768), saturated to [-32768, 32767]
_S16_MIN, _S16_MAX = -32768.0, 32767.0
DEFAULT = 255  # "server's choice" for the optional u8 fields of HELLO
ARCHIVAL = 0xFFFF  # HELLO playout_ms: every block is wanted, however late (file transfer)


@dataclass(frozen=True, slots=True)
class Header:
    type: PacketType
    flags: int
    session: int  # u32, 0 before ACCEPT
    seq: int  # u32, per direction and stream (per stem for STEM)
    timestamp: int  # u64, stream index of the block's first sample
    send_time: int  # u64 ns, sender's monotonic clock (echoed by PONG)
    frames: int = 0  # samples per channel in the payload (AUDIO/STEM)
    channels: int = 0
    format: int = 0  # SampleFormat for AUDIO/STEM
    stem: int = 0  # stem index for STEM
    payload_len: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: bytes  # 16 random bytes, names the client's attempt
    sample_rate: int  # Hz of the audio the client will send (must equal the model's)
    block_frames: int
    channels: int
    format: int
    preset: int  # PRESET_CODES
    hop_frames: int = DEFAULT  # H override, 255 = preset's
    lookahead: int = DEFAULT  # L override, 255 = preset's
    synthesis: int = DEFAULT  # SYNTHESIS_CODES override, 255 = preset's
    synthesis_hop: int = 0  # samples between synthesis frames (m), 0 = preset's
    mask_hold: int = 0  # synthesis hops one mask is applied for (k), 0 = preset's
    features: int = 0  # Features the client asks for
    playout_ms: int = 0  # client's playout budget: 0 = server default, ARCHIVAL = no deadline
    cookie: bytes = bytes(COOKIE_SIZE)


@dataclass(frozen=True, slots=True)
class Accept:
    sample_rate: int
    block_frames: int
    channels: int
    format: int
    preset: int
    hop_frames: int
    lookahead: int
    synthesis: int
    delay: int  # D in samples: STEM sample i is the separation of AUDIO sample i - D
    synthesis_hop: int  # m, samples
    mask_hold: int  # k, synthesis hops per inference
    features: int  # Features granted
    reorder_ms: int  # the server's input reorder window: delay it may add, part of the budget
    server_nonce: bytes
    model: str
    stems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ErrorMsg:
    code: int
    message: str


# --------------------------------------------------------------------------- header
def pack_header(buf: bytearray | memoryview, h: Header) -> None:
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, h.type, h.flags, h.stem, h.channels, h.format,
                      h.session, h.seq, h.timestamp, h.send_time, h.frames, h.payload_len)


def decode_header(data: bytes | memoryview) -> Header:
    n = len(data)
    if n < HEADER_SIZE + TAG_SIZE:
        raise WireError("truncated", f"{n} bytes")
    (magic, version, ptype, flags, stem, channels, fmt, session, seq, ts, sent, frames,
     plen) = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("bad-magic")
    if version != VERSION:
        raise WireError("bad-version", str(version))
    if not 1 <= ptype <= len(PacketType):
        raise WireError("bad-type", str(ptype))
    if flags & ~_KNOWN_FLAGS:
        raise WireError("bad-flags")
    if plen > MAX_PAYLOAD or n != HEADER_SIZE + plen + TAG_SIZE:
        raise WireError("bad-length", f"payload {plen}, datagram {n}")
    t = _TYPES[ptype]  # tuple lookup: calling the IntEnum costs more than the unpack
    if flags and t not in _MEDIA:  # the flags describe media blocks only
        raise WireError("bad-flags")
    if t in _MEDIA:
        if fmt not in (1, 2) or not 1 <= channels <= MAX_CHANNELS:
            raise WireError("bad-media-format")
        if frames not in BLOCK_FRAMES or plen != frames * channels * _WIDTH[fmt]:
            raise WireError("bad-media-length")
        if t is PacketType.AUDIO and stem:
            raise WireError("bad-stem")
        if stem >= MAX_STEMS:
            raise WireError("bad-stem")
    elif frames or channels or fmt or stem:
        raise WireError("bad-header-fields")
    return Header(t, flags, session, seq, ts, sent, frames, channels, fmt, stem, plen)


def payload(data: bytes | memoryview, h: Header) -> memoryview:
    return memoryview(data)[HEADER_SIZE:HEADER_SIZE + h.payload_len]


def check_tag(data: bytes | memoryview, key: bytes) -> bool:
    mv = memoryview(data)
    return auth.verify_view(key, mv[:-TAG_SIZE], mv[-TAG_SIZE:])


def open_packet(data: bytes, key: bytes | auth.Aead) -> bytes:
    """The packet with its payload authenticated (and decrypted, under AEAD); WireError
    "bad-tag" if it fails."""
    out = auth.open_packet(key, data)
    if out is None:
        raise WireError("bad-tag")
    return out


# --------------------------------------------------------------------------- whole packets
def encode(h: Header, body: bytes, key: bytes | auth.Aead) -> bytes:
    if len(body) > MAX_PAYLOAD:
        raise WireError("bad-length", f"payload {len(body)} > {MAX_PAYLOAD}")
    buf = bytearray(HEADER_SIZE + len(body) + TAG_SIZE)
    pack_header(buf, _with_len(h, len(body)))
    buf[HEADER_SIZE:HEADER_SIZE + len(body)] = body
    return auth.seal(key, buf)


def _with_len(h: Header, n: int) -> Header:
    if h.payload_len == n:
        return h
    return Header(h.type, h.flags, h.session, h.seq, h.timestamp, h.send_time, h.frames,
                  h.channels, h.format, h.stem, n)


def encode_hello(m: Hello) -> bytes:
    if len(m.nonce) != NONCE_SIZE or len(m.cookie) != COOKIE_SIZE:
        raise WireError("bad-hello", "nonce or cookie size")
    return _HELLO.pack(m.nonce, m.sample_rate, m.block_frames, m.channels, m.format, m.preset,
                       m.hop_frames, m.lookahead, m.synthesis, m.synthesis_hop, m.mask_hold,
                       m.features, m.playout_ms, m.cookie)


def decode_hello(p: memoryview | bytes) -> Hello:
    if len(p) != _HELLO.size:
        raise WireError("bad-hello", f"{len(p)} bytes")
    hello = Hello(*_HELLO.unpack(p))
    if hello.features & ~KNOWN_FEATURES:
        raise WireError("bad-hello", "unknown feature bits")
    return hello


def _name(s: str) -> bytes:
    b = s.encode("utf-8")
    if not b or len(b) > MAX_NAME:
        raise WireError("bad-name", s[:20])
    return bytes([len(b)]) + b


def encode_accept(m: Accept) -> bytes:
    if not 1 <= len(m.stems) <= MAX_STEMS:
        raise WireError("bad-accept", "stem count")
    head = _ACCEPT.pack(m.sample_rate, m.block_frames, m.channels, m.format, len(m.stems),
                        m.preset, m.hop_frames, m.lookahead, m.synthesis, m.delay,
                        m.synthesis_hop, m.mask_hold, m.features, m.reorder_ms,
                        m.server_nonce)
    return head + _name(m.model) + b"".join(_name(s) for s in m.stems)


def check_accept_fits(model: str, stems: tuple[str, ...] | list[str]) -> None:
    """Raise WireError unless an ACCEPT naming this model and these stems fits one datagram
    (checked when a model is loaded, long before a client asks)."""
    acc = Accept(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(NONCE_SIZE), model, tuple(stems))
    body = encode_accept(acc)
    if len(body) > MAX_PAYLOAD:
        raise WireError("bad-accept", f"the model name and {len(stems)} stem names take "
                                      f"{len(body)} bytes in the ACCEPT packet, more than the "
                                      f"{MAX_PAYLOAD} that fit one datagram: shorten them")


def decode_accept(p: memoryview | bytes) -> Accept:
    p = bytes(p)
    if len(p) < _ACCEPT.size:
        raise WireError("bad-accept", "truncated")
    (sr, block, ch, fmt, n_stems, preset, hop, look, syn, delay, m, k, features, reorder_ms,
     nonce) = _ACCEPT.unpack_from(p, 0)
    if not 1 <= n_stems <= MAX_STEMS:
        raise WireError("bad-accept", "stem count")
    pos, names = _ACCEPT.size, []
    for _ in range(1 + n_stems):
        if pos >= len(p):
            raise WireError("bad-accept", "truncated names")
        n = p[pos]
        if not 1 <= n <= MAX_NAME or pos + 1 + n > len(p):
            raise WireError("bad-accept", "name length")
        try:
            names.append(p[pos + 1:pos + 1 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise WireError("bad-accept", "name encoding") from None
        pos += 1 + n
    if pos != len(p):
        raise WireError("bad-accept", "trailing bytes")
    if features & ~KNOWN_FEATURES:
        raise WireError("bad-accept", "unknown feature bits")
    return Accept(sr, block, ch, fmt, preset, hop, look, syn, delay, m, k, features,
                  reorder_ms, nonce, names[0], tuple(names[1:]))


def encode_cookie(cookie: bytes, salt: bytes) -> bytes:
    if len(cookie) != COOKIE_SIZE or len(salt) != auth.SALT_SIZE:
        raise WireError("bad-cookie", "cookie or salt size")
    return cookie + salt


def decode_cookie(p: memoryview | bytes) -> tuple[bytes, bytes]:
    """COOKIE payload: (cookie to echo in the next HELLO, the server's passphrase salt)."""
    if len(p) != COOKIE_SIZE + auth.SALT_SIZE:
        raise WireError("bad-cookie", f"{len(p)} bytes")
    p = bytes(p)
    return p[:COOKIE_SIZE], p[COOKIE_SIZE:]


def encode_pong(echo_ns: int) -> bytes:
    return _PONG.pack(echo_ns)


def decode_pong(p: memoryview | bytes) -> int:
    if len(p) != _PONG.size:
        raise WireError("bad-pong")
    return _PONG.unpack(p)[0]


def encode_bye(reason: ByeReason = ByeReason.NORMAL) -> bytes:
    return _BYE.pack(reason)


def decode_bye(p: memoryview | bytes) -> int:
    if len(p) != _BYE.size:
        raise WireError("bad-bye")
    return _BYE.unpack(p)[0]


def encode_error(code: ErrorCode, message: str) -> bytes:
    b = message.encode("utf-8")[:200]
    return _ERROR.pack(code, len(b)) + b


def decode_error(p: memoryview | bytes) -> ErrorMsg:
    p = bytes(p)
    if len(p) < _ERROR.size:
        raise WireError("bad-error")
    code, n = _ERROR.unpack_from(p, 0)
    if len(p) != _ERROR.size + n:
        raise WireError("bad-error", "length")
    return ErrorMsg(code, p[_ERROR.size:].decode("utf-8", errors="replace"))


# --------------------------------------------------------------------------- media hot path
class MediaWriter:
    """Encodes AUDIO/STEM packets into one preallocated buffer (reused per packet).

    Per packet (s16): scale into a contiguous float32 scratch, saturate with two ufuncs,
    then round straight into the packet's interleaved int16 payload (`rint` with an int16
    `out`): one strided pass, four ufunc calls, no temporaries. `np.clip` is avoided on
    purpose: its Python wrapper costs more than the arithmetic on 512 samples.
    """

    def __init__(self, frames: int, channels: int, fmt: SampleFormat) -> None:
        self.frames, self.channels, self.format = frames, channels, SampleFormat(fmt)
        self.payload_len = frames * channels * self.format.width
        if self.payload_len > MAX_PAYLOAD:
            raise WireError("bad-media-length",
                            f"{frames} frames x {channels} ch x {self.format.width} B > "
                            f"{MAX_PAYLOAD}")
        self.buf = bytearray(HEADER_SIZE + self.payload_len + TAG_SIZE)
        self._s16 = self.format is SampleFormat.S16LE
        dtype = "<i2" if self._s16 else "<f4"
        self._pcm = np.frombuffer(self.buf, dtype=dtype, count=frames * channels,
                                  offset=HEADER_SIZE).reshape(frames, channels)
        self._pcm_t = self._pcm.T  # [channels, frames] view of the interleaved payload
        self._scratch = np.zeros((channels, frames), np.float32)
        self._mv = memoryview(self.buf)
        self._signed = self._mv[:-TAG_SIZE]
        self._tag_at = len(self.buf) - TAG_SIZE

    def write(self, ptype: PacketType, samples: np.ndarray, *, session: int, seq: int,
              timestamp: int, send_time: int, key: bytes | auth.Aead, stem: int = 0,
              flags: int = 0) -> bytes:
        """samples: float32 [channels, frames]; s16 scales by 32768, rounds half to even
        and saturates."""
        if self._s16:
            sc = self._scratch
            np.multiply(samples, _S16_SCALE, out=sc)
            np.maximum(sc, _S16_MIN, out=sc)
            np.minimum(sc, _S16_MAX, out=sc)
            np.rint(sc, out=self._pcm_t, casting="unsafe")
        else:
            np.copyto(self._pcm_t, samples)
        _HEADER.pack_into(self.buf, 0, MAGIC, VERSION, ptype, flags, stem, self.channels,
                          self.format, session, seq, timestamp, send_time, self.frames,
                          self.payload_len)
        if isinstance(key, bytes):  # the common case: a keyed tag over the reused buffer
            self.buf[self._tag_at:] = auth.tag(key, self._signed)
            return bytes(self.buf)
        return auth.seal(key, self.buf)  # AEAD


def read_media(data: bytes | memoryview, h: Header, out: np.ndarray,
               offset: int = HEADER_SIZE) -> None:
    """Decode the PCM payload of a validated AUDIO/STEM packet into out [channels, frames].
    offset=0 reads a bare payload (a block repaired from redundancy)."""
    frames, channels = h.frames, h.channels
    if out.shape != (channels, frames):
        raise WireError("bad-media-length", "block shape differs from the session's")
    if h.format == 1:  # SampleFormat.S16LE, compared as an int: cheaper than the enum
        pcm = np.frombuffer(data, dtype="<i2", count=frames * channels, offset=offset)
        np.multiply(pcm.reshape(frames, channels).T, 1.0 / _S16_SCALE, out=out)
    else:
        pcm = np.frombuffer(data, dtype="<f4", count=frames * channels, offset=offset)
        np.copyto(out, pcm.reshape(frames, channels).T)
        if not np.isfinite(out).all():
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
