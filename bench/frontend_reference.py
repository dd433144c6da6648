"""The media hot path as first written (wire v2 at commit 46d62ef), kept only so that
`stemlink bench frontend` can time it against the current one in the same run, on the
same loaded machine: interleaved repeats make the before/after ratio meaningful where
absolute microseconds drift with other processes' load. Produces the same bytes and
samples as `stemlink.wire.packets` (asserted in tests/test_frontend.py)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from stemlink.wire import packets as pk
from stemlink.wire.constants import (
    BLOCK_FRAMES,
    HEADER_SIZE,
    MAGIC,
    MAX_CHANNELS,
    MAX_PAYLOAD,
    TAG_SIZE,
    VERSION,
    PacketType,
    SampleFormat,
)

_KNOWN_FLAGS = 7
_MEDIA = (PacketType.AUDIO, PacketType.STEM)


def _tag(key: bytes, data) -> bytes:
    return hashlib.blake2s(data, digest_size=TAG_SIZE, key=key).digest()


def decode_header(data: bytes) -> pk.Header:
    n = len(data)
    if n < HEADER_SIZE + TAG_SIZE:
        raise pk.WireError("truncated")
    (magic, version, ptype, flags, stem, channels, fmt, session, seq, ts, sent, frames,
     plen) = pk._HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise pk.WireError("bad-magic")
    if not 1 <= ptype <= len(PacketType):
        raise pk.WireError("bad-type")
    if flags & ~_KNOWN_FLAGS:
        raise pk.WireError("bad-flags")
    if plen > MAX_PAYLOAD or n != HEADER_SIZE + plen + TAG_SIZE:
        raise pk.WireError("bad-length")
    t = PacketType(ptype)
    if t in _MEDIA:
        if fmt not in (1, 2) or not 1 <= channels <= MAX_CHANNELS:
            raise pk.WireError("bad-media-format")
        if frames not in BLOCK_FRAMES or plen != frames * channels * SampleFormat(fmt).width:
            raise pk.WireError("bad-media-length")
    return pk.Header(t, flags, session, seq, ts, sent, frames, channels, fmt, stem, plen)


def check_tag(data: bytes, key: bytes) -> bool:
    mv = memoryview(data)
    return hmac.compare_digest(_tag(key, mv[:-TAG_SIZE]), bytes(mv[-TAG_SIZE:]))


def read_media(data: bytes, h: pk.Header, out: np.ndarray) -> None:
    if out.shape != (h.channels, h.frames):
        raise pk.WireError("bad-media-length")
    dtype = "<i2" if h.format == SampleFormat.S16LE else "<f4"
    pcm = np.frombuffer(data, dtype=dtype, count=h.frames * h.channels, offset=HEADER_SIZE)
    if h.format == SampleFormat.S16LE:
        np.multiply(pcm.reshape(h.frames, h.channels).T, 1.0 / 32768.0, out=out)
    else:
        np.copyto(out, pcm.reshape(h.frames, h.channels).T)
        if not np.isfinite(out).all():
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


class MediaWriter:
    def __init__(self, frames: int, channels: int, fmt: SampleFormat) -> None:
        self.frames, self.channels, self.format = frames, channels, SampleFormat(fmt)
        self.payload_len = frames * channels * self.format.width
        self.buf = bytearray(HEADER_SIZE + self.payload_len + TAG_SIZE)
        dtype = "<i2" if self.format is SampleFormat.S16LE else "<f4"
        self._pcm = np.frombuffer(self.buf, dtype=dtype, count=frames * channels,
                                  offset=HEADER_SIZE).reshape(frames, channels)
        self._scratch = np.zeros((frames, channels), np.float32)
        self._mv = memoryview(self.buf)

    def write(self, ptype: PacketType, samples: np.ndarray, *, session: int, seq: int,
              timestamp: int, send_time: int, key: bytes, stem: int = 0,
              flags: int = 0) -> bytes:
        if self.format is SampleFormat.S16LE:
            np.multiply(samples.T, 32768.0, out=self._scratch)
            np.rint(self._scratch, out=self._scratch)
            np.clip(self._scratch, -32768.0, 32767.0, out=self._scratch)
            np.copyto(self._pcm, self._scratch, casting="unsafe")
        else:
            np.copyto(self._pcm, samples.T)
        pk._HEADER.pack_into(self.buf, 0, MAGIC, VERSION, ptype, flags, stem, self.channels,
                             self.format, session, seq, timestamp, send_time, self.frames,
                             self.payload_len)
        self.buf[-TAG_SIZE:] = _tag(key, self._mv[:-TAG_SIZE])
        return bytes(self.buf)
