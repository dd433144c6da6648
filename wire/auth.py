"""Packet protection: keys, the key schedule, 16-byte tags and optional AEAD.

Key schedule (docs/PROTOCOL.md, "Keys"): a root key comes from a key file (32 random bytes,
used as is), a passphrase (scrypt with the server's salt) or nothing (integrity only).
From it and the client's nonce come the handshake keys, one per direction; from it and both
nonces and the session id come the session keys, one per direction. COOKIE is tagged with
a key derived from the client's nonce alone, so only someone who saw the HELLO can forge it.

A key is `bytes` (keyed BLAKE2s tag over header + payload) or an `Aead` (ChaCha20-Poly1305:
payload encrypted, header authenticated, the 16-byte Poly1305 tag in the tag's place).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from stemlink.errors import StemlinkError
from stemlink.wire.constants import HEADER_SIZE, TAG_SIZE

KEY_SIZE = 32
SALT_SIZE = 16
# scrypt cost: 32 MiB and ~0.1 s per derivation on a desktop core; paid once per server start
# and once per client connection, and by an attacker once per guessed passphrase
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_SCRYPT_MAXMEM = 64 << 20

_PUBLIC = hashlib.blake2s(b"stemlink-v2 public").digest()  # first HELLO: integrity only
_NO_KEY = bytes(KEY_SIZE)  # root key of a server and client that run without a key


class AuthError(StemlinkError):
    """A key or passphrase that cannot be used."""


def _kdf(key: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hashlib.blake2s(digest_size=KEY_SIZE, key=key)
    h.update(label)
    for p in parts:
        h.update(len(p).to_bytes(2, "big"))
        h.update(p)
    return h.digest()


@dataclass(frozen=True)
class Credential:
    """What a user gave: a 32-byte key (key file), a passphrase, or nothing."""

    key: bytes = b""
    passphrase: bytes = b""

    def __post_init__(self) -> None:
        if self.key and len(self.key) != KEY_SIZE:
            raise AuthError(f"a key must be {KEY_SIZE} bytes, not {len(self.key)}")
        if self.key and self.passphrase:
            raise AuthError("give a key file or a passphrase, not both")

    @property
    def keyed(self) -> bool:
        return bool(self.key or self.passphrase)

    @property
    def kind(self) -> str:
        return "key file" if self.key else "passphrase" if self.passphrase else "none"

    def root(self, salt: bytes) -> bytes:
        """The root key. A passphrase is stretched with scrypt and the server's salt, so a
        captured handshake costs an attacker one scrypt per guess."""
        if self.key:
            return self.key
        if self.passphrase:
            return hashlib.scrypt(self.passphrase, salt=b"stemlink-v2 psk" + salt,
                                  n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM,
                                  dklen=KEY_SIZE)
        return _NO_KEY


def public_key() -> bytes:
    """Tags the first HELLO (no cookie yet): anyone can compute it."""
    return _PUBLIC


def cookie_key(client_nonce: bytes) -> bytes:
    """Tags COOKIE: bound to the client's nonce, which only the HELLO carried."""
    return _kdf(_PUBLIC, b"stemlink-v2 cookie", client_nonce)


@dataclass(frozen=True, slots=True)
class HandshakeKeys:
    c2s: bytes  # HELLO with a cookie
    s2c: bytes  # ACCEPT, and ERROR before a session exists


def handshake_keys(root: bytes, client_nonce: bytes, salt: bytes) -> HandshakeKeys:
    return HandshakeKeys(_kdf(root, b"stemlink-v2 hs c2s", client_nonce, salt),
                         _kdf(root, b"stemlink-v2 hs s2c", client_nonce, salt))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    c2s: bytes | Aead  # AUDIO, PING, BYE from the client
    s2c: bytes | Aead  # STEM, PONG, BYE, ERROR from the server


def session_keys(root: bytes, client_nonce: bytes, server_nonce: bytes, session_id: int,
                 encrypt: bool = False) -> SessionKeys:
    parts = (client_nonce, server_nonce, session_id.to_bytes(4, "big"))
    c2s = _kdf(root, b"stemlink-v2 session c2s", *parts)
    s2c = _kdf(root, b"stemlink-v2 session s2c", *parts)
    if encrypt:
        return SessionKeys(Aead(c2s), Aead(s2c))
    return SessionKeys(c2s, s2c)


# --------------------------------------------------------------------------- AEAD
def aead_available() -> bool:
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
    except ImportError:
        return False
    return True


class Aead:
    """ChaCha20-Poly1305 on the payload; the 36-byte header is the associated data.

    The 96-bit nonce is (type, stem, seq, low 48 bits of timestamp) from the header: under
    one key (one session, one direction) a sender never repeats that combination, since
    seq is per stream and never reused."""

    __slots__ = ("key", "_aead")

    def __init__(self, key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
        except ImportError:
            raise AuthError("encryption needs the `cryptography` package: "
                            "pip install 'stemlink[encrypt]'") from None
        self.key = key
        self._aead = ChaCha20Poly1305(key)

    @staticmethod
    def nonce(header: bytes | bytearray | memoryview) -> bytes:
        return bytes(header[3:4]) + bytes(header[5:6]) + bytes(header[12:16]) + \
            bytes(header[18:24])

    def seal(self, buf: bytearray) -> bytes:
        hdr = bytes(buf[:HEADER_SIZE])
        ct = self._aead.encrypt(self.nonce(hdr), bytes(buf[HEADER_SIZE:-TAG_SIZE]), hdr)
        return hdr + ct

    def open(self, data: bytes) -> bytes | None:
        from cryptography.exceptions import InvalidTag

        hdr = data[:HEADER_SIZE]
        try:
            pt = self._aead.decrypt(self.nonce(hdr), data[HEADER_SIZE:], hdr)
        except InvalidTag:
            return None
        return hdr + pt + bytes(TAG_SIZE)  # same layout as a tagged packet, tag zeroed


# --------------------------------------------------------------------------- tags
def tag(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2s(data, digest_size=TAG_SIZE, key=key).digest()


def verify(key: bytes, data: bytes | memoryview, expected: bytes | memoryview) -> bool:
    return hmac.compare_digest(tag(key, data), bytes(expected))


def verify_view(key: bytes, data: bytes | memoryview, expected: bytes | memoryview) -> bool:
    """verify() without copying `expected`: compare_digest takes any bytes-like object."""
    return hmac.compare_digest(
        hashlib.blake2s(data, digest_size=TAG_SIZE, key=key).digest(), expected)


def seal(key: bytes | Aead, buf: bytearray) -> bytes:
    """Protect a packet laid out as header | payload | room for the tag; return it."""
    if isinstance(key, Aead):
        return key.seal(buf)
    buf[-TAG_SIZE:] = tag(key, memoryview(buf)[:-TAG_SIZE])
    return bytes(buf)


def open_packet(key: bytes | Aead, data: bytes) -> bytes | None:
    """The authenticated packet (payload decrypted under AEAD), or None if it fails."""
    if isinstance(key, Aead):
        return key.open(data)
    mv = memoryview(data)
    return data if verify(key, mv[:-TAG_SIZE], mv[-TAG_SIZE:]) else None
