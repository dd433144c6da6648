"""Packet tags: 16-byte keyed BLAKE2s over header + payload.

Keys: a pre-shared key (PSK, may be empty) gives the handshake key; each session's key is
derived from the PSK, both nonces and the session id. With an empty PSK the tag only
protects integrity (anyone can compute it); with a PSK only its holders can."""

from __future__ import annotations

import hashlib
import hmac

from stemlink.wire.constants import TAG_SIZE

_LABEL_HANDSHAKE = b"stemlink-v1 handshake"
_LABEL_SESSION = b"stemlink-v1 session"


def _kdf(psk: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hashlib.blake2s(digest_size=32, key=hashlib.blake2s(psk).digest())
    h.update(label)
    for p in parts:
        h.update(len(p).to_bytes(2, "big"))
        h.update(p)
    return h.digest()


def handshake_key(psk: bytes) -> bytes:
    return _kdf(psk, _LABEL_HANDSHAKE)


def session_key(psk: bytes, client_nonce: bytes, server_nonce: bytes, session_id: int) -> bytes:
    return _kdf(psk, _LABEL_SESSION, client_nonce, server_nonce, session_id.to_bytes(4, "big"))


def tag(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2s(data, digest_size=TAG_SIZE, key=key).digest()


def verify(key: bytes, data: bytes | memoryview, expected: bytes | memoryview) -> bool:
    return hmac.compare_digest(tag(key, data), bytes(expected))


def verify_view(key: bytes, data: bytes | memoryview, expected: bytes | memoryview) -> bool:
    """verify() without copying `expected`: compare_digest takes any bytes-like object."""
    return hmac.compare_digest(
        hashlib.blake2s(data, digest_size=TAG_SIZE, key=key).digest(), expected)
