"""Wire codes and sizes (docs/PROTOCOL.md is the specification)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

MAGIC = 0x534C  # "SL"
VERSION = 2  # v2: HELLO/ACCEPT carry synthesis hop, mask hold and feature bits
HEADER_SIZE = 36
TAG_SIZE = 16
MAX_PAYLOAD = 1024  # keeps every datagram under 1200 bytes: no IP fragmentation on Wi-Fi
MAX_DATAGRAM = HEADER_SIZE + MAX_PAYLOAD + TAG_SIZE  # 1076
NONCE_SIZE = 16
COOKIE_SIZE = 32
MAX_NAME = 64  # bytes of UTF-8 in model and stem names
MAX_STEMS = 16
MAX_CHANNELS = 2
BLOCK_FRAMES = (64, 128, 256)  # allowed frames per AUDIO/STEM packet


class PacketType(IntEnum):
    HELLO = 1
    COOKIE = 2
    ACCEPT = 3
    AUDIO = 4
    STEM = 5
    PING = 6
    PONG = 7
    BYE = 8
    ERROR = 9


class Flags(IntFlag):
    NONE = 0
    CONCEALED = 1  # samples in this block were (partly) concealed, not measured
    REDUNDANT = 2  # a parity datagram: XOR of two blocks' payloads (wire.redundancy)
    LAST = 4  # the sender's final block of the stream


class Features(IntFlag):
    """Optional features a client asks for in HELLO; ACCEPT echoes the ones granted."""

    NONE = 0
    REDUNDANCY = 1  # parity datagrams both ways, repairing losses (wire.redundancy)
    ENCRYPT = 2  # AEAD on every session payload


KNOWN_FEATURES = int(Features.REDUNDANCY | Features.ENCRYPT)


class SampleFormat(IntEnum):
    S16LE = 1
    F32LE = 2

    @property
    def width(self) -> int:
        return 2 if self is SampleFormat.S16LE else 4


class ErrorCode(IntEnum):
    SERVER_FULL = 1
    BAD_REQUEST = 2  # unsupported rate, format, channels, block size or preset
    UNKNOWN_SESSION = 3
    SHUTTING_DOWN = 4
    OVERLOADED = 5
    PROTOCOL = 6  # the session broke the protocol (e.g. AUDIO not in the negotiated format)
    INTERNAL = 7  # the server failed while processing the session
    ADDRESS_LIMIT = 8  # too many sessions from the client's address


class ByeReason(IntEnum):
    NORMAL = 0
    TIMEOUT = 1
    SHUTDOWN = 2


PRESET_CODES = {"ultra": 1, "monitor": 2, "balanced": 3, "quality": 4, "extreme": 5}
PRESET_NAMES = {v: k for k, v in PRESET_CODES.items()}
SYNTHESIS_CODES = {"standard": 0, "asymmetric": 1}
SYNTHESIS_NAMES = {v: k for k, v in SYNTHESIS_CODES.items()}
