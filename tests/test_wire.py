"""Wire format v1 to the byte: exact layouts, a truncated twin for every packet, fuzzing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemlink.wire import auth
from stemlink.wire import packets as pk
from stemlink.wire.constants import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    TAG_SIZE,
    ByeReason,
    ErrorCode,
    Flags,
    PacketType,
    SampleFormat,
)
from stemlink.wire.seq import ReplayWindow, seq_add, seq_diff, seq_gt

KEY = auth.public_key()


def test_header_layout_is_exact():
    h = pk.Header(PacketType.AUDIO, Flags.LAST, 0x01020304, 0xFFFFFFFF, 0x0102030405060708,
                  0x1112131415161718, 256, 2, SampleFormat.S16LE, 0, 1024)
    buf = bytearray(HEADER_SIZE)
    pk.pack_header(buf, h)
    assert buf.hex() == (
        "534c" "02" "04" "04" "00" "02" "01"  # magic, version, AUDIO, LAST, stem, ch, s16
        "01020304" "ffffffff"  # session, seq
        "0102030405060708" "1112131415161718"  # media timestamp, send time
        "0100" "0400")  # frames 256, payload 1024 bytes


def _packets():
    hello = pk.Hello(bytes(range(16)), 44100, 256, 2, 1, 2)
    acc = pk.Accept(44100, 256, 2, 1, 2, 2, 0, 0, 5119, 1024, 1, 0, 12, bytes(16),
                    "spleeter-2stems", ("vocals", "accompaniment"))
    return [
        (pk.Header(PacketType.HELLO, 0, 0, 0, 0, 7), pk.encode_hello(hello)),
        (pk.Header(PacketType.COOKIE, 0, 0, 0, 0, 7), bytes(32)),
        (pk.Header(PacketType.ACCEPT, 0, 9, 0, 0, 7), pk.encode_accept(acc)),
        (pk.Header(PacketType.PING, 0, 9, 3, 0, 7), b""),
        (pk.Header(PacketType.PONG, 0, 9, 3, 0, 7), pk.encode_pong(123)),
        (pk.Header(PacketType.BYE, 0, 9, 0, 0, 7), pk.encode_bye(ByeReason.TIMEOUT)),
        (pk.Header(PacketType.ERROR, 0, 0, 0, 0, 7), pk.encode_error(ErrorCode.SERVER_FULL,
                                                                      "full")),
        (pk.Header(PacketType.AUDIO, 0, 9, 5, 512, 7, 256, 2, 1), bytes(1024)),
        (pk.Header(PacketType.STEM, Flags.CONCEALED, 9, 5, 512, 7, 128, 2, 2, 1), bytes(1024)),
    ]


@pytest.mark.parametrize("h,body", _packets(), ids=lambda v: getattr(v, "type", "") and
                         v.type.name)
def test_round_trip_and_truncated_twin(h, body):
    data = pk.encode(h, body, KEY)
    assert len(data) <= MAX_DATAGRAM < 1200
    got = pk.decode_header(data)
    assert got.type == h.type and got.session == h.session and got.seq == h.seq
    assert bytes(pk.payload(data, got)) == body
    assert pk.check_tag(data, KEY)
    assert not pk.check_tag(data, auth.cookie_key(bytes(16)))
    for cut in (1, TAG_SIZE, len(data) - HEADER_SIZE + 1):
        with pytest.raises(pk.WireError):
            pk.decode_header(data[:-cut])
    flipped = bytearray(data)
    flipped[HEADER_SIZE - 1] ^= 0x01  # payload length off by one
    with pytest.raises(pk.WireError, match="bad-length"):
        pk.decode_header(bytes(flipped))


def test_payload_decoders_round_trip():
    acc = pk.Accept(48000, 128, 1, 2, 4, 4, 8, 1, 12345, 512, 2, 1, 20, bytes(range(16)), "m",
                    ("a", "b", "c", "d"))
    assert pk.decode_accept(pk.encode_accept(acc)) == acc
    with pytest.raises(pk.WireError):
        pk.decode_accept(pk.encode_accept(acc) + b"x")
    with pytest.raises(pk.WireError):
        pk.decode_accept(pk.encode_accept(acc)[:-1])
    hello = pk.Hello(bytes(16), 44100, 64, 1, 2, 0, 1, 2, 1, 256, 4, 1, 80, bytes(range(32)))
    assert pk.decode_hello(pk.encode_hello(hello)) == hello
    with pytest.raises(pk.WireError):
        pk.decode_hello(pk.encode_hello(hello)[:-1])
    e = pk.decode_error(pk.encode_error(ErrorCode.BAD_REQUEST, "nope"))
    assert (e.code, e.message) == (ErrorCode.BAD_REQUEST, "nope")
    assert pk.decode_pong(pk.encode_pong(2**63)) == 2**63


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b.__setitem__(0, 0x00), "bad-magic"),
    (lambda b: b.__setitem__(2, 1), "bad-version"),
    (lambda b: b.__setitem__(3, 0), "bad-type"),
    (lambda b: b.__setitem__(3, 99), "bad-type"),
    (lambda b: b.__setitem__(4, 0x80), "bad-flags"),
    (lambda b: b.__setitem__(7, 9), "bad-media-format"),
    (lambda b: b.__setitem__(6, 3), "bad-media-format"),
    (lambda b: b.__setitem__(32, 0x03), "bad-media-length"),  # frames 768+256
    (lambda b: b.__setitem__(34, 0xFF), "bad-length"),  # absurd payload length
    (lambda b: b.__setitem__(5, 1), "bad-stem"),  # AUDIO with a stem id
])
def test_each_malformation_has_its_reason(mutate, reason):
    data = bytearray(pk.encode(pk.Header(PacketType.AUDIO, 0, 9, 5, 512, 7, 256, 2, 1),
                               bytes(1024), KEY))
    mutate(data)
    with pytest.raises(pk.WireError) as e:
        pk.decode_header(bytes(data))
    assert e.value.reason == reason


@pytest.mark.parametrize("t", [t for t in PacketType if t not in (PacketType.AUDIO,
                                                                   PacketType.STEM)])
@pytest.mark.parametrize("flags", [1, 2, 4, 7])
def test_flags_are_refused_on_packets_that_carry_no_media(t, flags):
    """The flags describe media blocks (CONCEALED, REDUNDANT, LAST): a control packet with
    any of them set is malformed, not a PING that happens to say REDUNDANT."""
    data = pk.encode(pk.Header(t, 0, 9, 5, 0, 7), bytes(8), KEY)
    pk.decode_header(data)  # well-formed without them
    bad = bytearray(data)
    bad[4] = flags
    with pytest.raises(pk.WireError) as e:
        pk.decode_header(bytes(bad))
    assert e.value.reason == "bad-flags"


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=1300))
def test_random_bytes_never_raise_anything_but_wire_error(data):
    try:
        h = pk.decode_header(data)
    except pk.WireError:
        return
    assert len(data) == HEADER_SIZE + h.payload_len + TAG_SIZE


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_payload_decoders_on_random_bytes(data):
    for dec in (pk.decode_hello, pk.decode_accept, pk.decode_error, pk.decode_pong,
                pk.decode_bye):
        try:
            dec(data)
        except pk.WireError:
            pass


def test_media_round_trip_s16_and_f32():
    rng = np.random.default_rng(0)
    x = (rng.integers(-32768, 32767, (2, 256)) / 32768.0).astype(np.float32)
    w = pk.MediaWriter(256, 2, SampleFormat.S16LE)
    d = w.write(PacketType.AUDIO, x, session=1, seq=2, timestamp=256, send_time=3, key=KEY)
    out = np.zeros((2, 256), np.float32)
    pk.read_media(d, pk.decode_header(d), out)
    np.testing.assert_array_equal(out, x)  # s16 values survive exactly
    loud = np.full((2, 256), 2.0, np.float32)
    d = w.write(PacketType.AUDIO, loud, session=1, seq=2, timestamp=0, send_time=3, key=KEY)
    pk.read_media(d, pk.decode_header(d), out)
    assert out.max() == pytest.approx(32767 / 32768)  # saturates, never wraps
    wf = pk.MediaWriter(128, 2, SampleFormat.F32LE)
    y = rng.standard_normal((2, 128)).astype(np.float32)
    d = wf.write(PacketType.STEM, y, session=1, seq=2, timestamp=0, send_time=3, key=KEY,
                 stem=1)
    out = np.zeros((2, 128), np.float32)
    pk.read_media(d, pk.decode_header(d), out)
    np.testing.assert_array_equal(out, y)
    with pytest.raises(pk.WireError):
        pk.MediaWriter(256, 2, SampleFormat.F32LE)  # 2048 bytes: would fragment


def test_sequence_arithmetic_at_the_wrap():
    assert seq_add(0xFFFFFFFF, 1) == 0
    assert seq_diff(0, 0xFFFFFFFF) == 1 and seq_diff(0xFFFFFFFF, 0) == -1
    assert seq_gt(5, 0xFFFFFFF0) and not seq_gt(0xFFFFFFF0, 5)


def test_replay_window_across_the_wrap():
    w = ReplayWindow(64)
    start = 0xFFFFFFF0
    seqs = [seq_add(start, i) for i in range(40)]
    assert all(w.check_and_mark(s) for s in seqs)
    assert not any(w.check_and_mark(s) for s in seqs)  # every duplicate refused
    assert w.check_and_mark(seq_add(start, 100))  # jump ahead
    assert not w.check_and_mark(seq_add(start, 30))  # now older than the window
    assert w.check_and_mark(seq_add(start, 99))  # inside the window, unseen
    assert not w.check_and_mark(seq_add(start, 99))
