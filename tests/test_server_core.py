"""Server and client cores wired together in memory: no sockets, no clock, no model."""

from types import SimpleNamespace

import numpy as np
import pytest

from stemlink.udp_client.core import Accepted, ClientCore, Pong, Rejected, ServerBye, State
from stemlink.udp_server.core import ServerCore, StreamSetup
from stemlink.wire import packets as pk
from stemlink.wire.constants import ErrorCode, PacketType

ADDR = ("127.0.0.1", 40000)


class StandInSeparator:
    """The numbers a Stream reads at session start; these tests never run the model (the
    worker is tested with the real one in test_server_gaps.py)."""

    delay, memory = 5119, 74751
    latency = SimpleNamespace(support=4096)
    card = SimpleNamespace(n_fft=4096)


def make_server(**kw):
    def make_stream(req):
        if req.hop_frames == 99:
            raise ValueError("H + L exceeds the window")
        return StreamSetup(StandInSeparator(), req.preset or "monitor", 2, 0, "standard", 5119)

    return ServerCore(card_stems=["vocals", "accompaniment"], model_name="m",
                      sample_rate=44100, channels=2, make_stream=make_stream, **kw)


def handshake(server, client, addr=ADDR, now=100.0):
    hello = client.connect(now)
    server.receive_datagram(hello, addr, now)
    (cookie, to), = server.take_outbox()
    assert to == addr and len(cookie) <= len(hello)  # anti-amplification
    (kind, hello2), = client.receive(cookie, now)
    assert kind == "send"
    server.receive_datagram(hello2, addr, now)
    out = server.take_outbox()
    events = [e for d, _ in out for e in client.receive(d, now)]
    return hello2, events


def test_handshake_establishes_a_keyed_session():
    s, c = make_server(), ClientCore(sample_rate=48000, channels=1, preset="monitor")
    _, events = handshake(s, c)
    (acc,) = events
    assert isinstance(acc, Accepted) and c.state is State.ESTABLISHED
    assert acc.accept.delay == 5119 and acc.accept.stems == ("vocals", "accompaniment")
    assert acc.accept.sample_rate == 44100 and acc.accept.channels == 2
    sess = s.sessions[acc.session]
    # one key per direction, both derived on each side
    assert sess.rx_key == c.key and sess.key == c.rx_key and len(c.key) == 32
    assert c.key != c.rx_key


def test_retransmitted_hello_gets_the_same_accept():
    s, c = make_server(), ClientCore(sample_rate=44100, channels=2)
    hello2, _ = handshake(s, c)
    s.receive_datagram(hello2, ADDR, 100.5)
    (again, _), = s.take_outbox()
    assert len(s.sessions) == 1 and pk.decode_header(again).type is PacketType.ACCEPT


def test_no_reply_without_a_valid_cookie_psk_or_from_another_address():
    s = make_server(psk=b"secret")
    c = ClientCore(sample_rate=44100, channels=2, psk=b"wrong")
    s.receive_datagram(c.connect(1.0), ADDR, 1.0)
    (cookie, _), = s.take_outbox()  # the cookie is stateless and needs no key
    (_, hello2), = c.receive(cookie, 1.0)
    s.receive_datagram(hello2, ADDR, 1.0)  # but the HELLO that echoes it does
    assert s.take_outbox() == [] and s.counters["drop_bad-tag"] == 1
    good = ClientCore(sample_rate=44100, channels=2, psk=b"secret")
    s.receive_datagram(good.connect(1.0), ADDR, 1.0)
    (cookie, _), = s.take_outbox()
    (_, hello2), = good.receive(cookie, 1.0)
    s.receive_datagram(hello2, ("10.0.0.9", 1), 1.0)  # cookie bound to the first address
    s.receive_datagram(hello2, ADDR, 1.0 + 60)  # expired
    assert s.take_outbox() == [] and s.counters["drop_bad-cookie"] == 2
    assert not s.sessions


def test_server_full_and_bad_requests_get_errors_after_the_cookie():
    s = make_server(max_sessions=1)
    handshake(s, ClientCore(sample_rate=44100, channels=2))
    _, events = handshake(s, ClientCore(sample_rate=44100, channels=2), ("127.0.0.1", 2))
    assert isinstance(events[0], Rejected) and events[0].code == ErrorCode.SERVER_FULL
    s2 = make_server()
    _, events = handshake(s2, ClientCore(sample_rate=44100, channels=2, hop_frames=99))
    assert isinstance(events[0], Rejected) and "window" in events[0].message
    _, events = handshake(s2, ClientCore(sample_rate=44100, channels=2, block=100))
    assert isinstance(events[0], Rejected) and events[0].code == ErrorCode.BAD_REQUEST


def test_audio_becomes_jobs_in_order_and_replays_are_dropped():
    s, c = make_server(), ClientCore(sample_rate=44100, channels=2, first_seq=0xFFFFFFFE)
    _, (acc,) = handshake(s, c)
    block = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    pkts = [c.audio(block * (k + 1) / 8, k * 256, 0) for k in range(4)]  # seq wraps
    for p in pkts:
        s.receive_datagram(p, ADDR, 101.0)
    s.receive_datagram(pkts[1], ADDR, 101.0)  # replay
    jobs = jobs_of(s)
    assert [j.timestamp for j in jobs] == [0, 256, 512, 768]
    sess = s.sessions[acc.session]
    np.testing.assert_allclose(sess.ring.blocks[jobs[2].slot], np.round(block * 3 / 8 * 32768)
                               .clip(-32768, 32767) / 32768)
    assert sess.counters["replay"] == 1 and s.counters["drop_replay"] == 1
    other = ClientCore(sample_rate=44100, channels=2)
    other.session, other.key = c.session, b"k" * 32  # forged packet, wrong key
    other._writer = pk.MediaWriter(256, 2, 1)
    s.receive_datagram(other.audio(block, 1024, 0), ADDR, 101.0)
    s.receive_datagram(c.audio(block, 2048, 0), ("127.0.0.1", 999), 101.0)
    assert s.counters["drop_bad-tag"] == 1 and s.counters["drop_wrong-address"] == 1
    assert jobs_of(s) == []


def test_ping_pong_bye_and_idle_timeout():
    s, c = make_server(idle_timeout=5.0), ClientCore(sample_rate=44100, channels=2)
    _, (acc,) = handshake(s, c)
    s.receive_datagram(c.ping(102.0), ADDR, 102.0)
    (pong, _), = s.take_outbox()
    (ev,) = c.receive(pong, 102.5)
    assert isinstance(ev, Pong) and ev.rtt_ns == pytest.approx(0.5e9, rel=1e-6)
    assert s.expire(106.0) == []
    gone = s.expire(107.5)
    assert [g.id for g in gone] == [acc.session] and not s.sessions
    assert [type(m).__name__ for m in s.take_messages()][-1] == "CloseStream"  # worker frees
    (bye, _), = s.take_outbox()
    (ev,) = c.receive(bye, 107.5)
    assert isinstance(ev, ServerBye) and ev.reason == 1


def test_garbage_is_dropped_silently_and_counted():
    s = make_server()
    rng = np.random.default_rng(0)
    for n in (0, 1, 35, 51, 52, 100, 1076, 1500, 65000):
        s.receive_datagram(rng.bytes(n), ADDR, 1.0)
    assert s.take_outbox() == [] and s.take_messages() == []
    assert s.counters["dropped"] == 9


def test_pending_input_is_bounded_in_audio_time():
    """Nobody takes the jobs: the session's ring holds PENDING_S of audio, whatever the
    block size; the rest is dropped as overload (the worker will conceal it)."""
    from stemlink.udp_server.core import PENDING_S

    for block in (64, 256):
        s, c = make_server(), ClientCore(sample_rate=44100, channels=2, block=block)
        _, (acc,) = handshake(s, c)
        cap = s.sessions[acc.session].ring.capacity
        assert cap == int(np.ceil(PENDING_S * 44100 / block))
        blk = np.zeros((2, block), np.float32)
        for k in range(cap + 10):
            s.receive_datagram(c.audio(blk, k * block, 0), ADDR, 101.0)
        assert len(jobs_of(s)) == cap
        assert s.sessions[acc.session].counters["overload"] == 10


def jobs_of(s):
    from stemlink.udp_server.stream import Job

    return [m for m in s.take_messages() if isinstance(m, Job)]


def _mutations():
    from hypothesis import strategies as st

    return st.lists(st.tuples(st.sampled_from(["flip", "cut", "field", "replay", "ts"]),
                              st.integers(0, 10_000), st.integers(0, 255)),
                    min_size=1, max_size=40)


def test_mutated_valid_packets_never_break_a_live_session():
    """Fuzz with mutations of *valid* packets of a live session (flipped bits, truncations,
    changed header fields — re-tagged or not —, replays, timestamp jumps): the core never
    raises, drops and counts what is invalid, and the session keeps producing jobs for
    the genuine stream in order."""
    from hypothesis import given, settings

    from stemlink.wire.auth import tag

    @settings(max_examples=150, deadline=None)
    @given(_mutations())
    def run(muts):
        s, c = make_server(), ClientCore(sample_rate=44100, channels=2)
        _, (acc,) = handshake(s, c)
        blk = np.zeros((2, 256), np.float32)
        sent, now, k = [], 101.0, 0
        for kind, pos, val in muts:
            good = c.audio(blk, k * 256, 0)
            k += 1
            sent.append(good)
            b = bytearray(good)
            if kind == "flip":
                b[pos % len(b)] ^= 1 << (val % 8)
            elif kind == "cut":
                b = b[:pos % len(b)]
            elif kind in ("field", "ts"):
                at = 16 + val % 8 if kind == "ts" else pos % (len(b) - 16)
                b[at] = val
                if val % 2:  # re-tag it with the session key: authentic but wrong
                    b[-16:] = tag(c.key, bytes(b[:-16]))
            else:
                b = bytearray(sent[pos % len(sent)])
            s.receive_datagram(bytes(b), ADDR, now)
            s.receive_datagram(good, ADDR, now)
            now += 256 / 44100
            s.on_timer(now + 1.0)
        assert s.counters["drop_internal-error"] == 0
        if acc.session in s.sessions:  # unless an authentic malformed packet ended it
            # not wedged: the genuine stream, moved on past anything forged, still flows
            later = (k + 2**40 // 256) * 256
            s.receive_datagram(c.audio(blk, later, 0), ADDR, now)
            s.receive_datagram(c.audio(blk, later + 256, 0), ADDR, now)
        jobs = jobs_of(s)
        for a, b in zip(jobs, jobs[1:], strict=False):  # in order, unless it restarted
            assert b.timestamp > a.timestamp or b.restart
        if acc.session in s.sessions:
            assert [j.timestamp for j in jobs[-2:]] == [later, later + 256]

    run()


def test_an_authentic_seq_jump_does_not_wedge_the_session_and_replays_stay_out():
    """A datagram tagged with the session key whose seq jumped 2^24 ahead (a client bug;
    nobody without the key can make one) moves the replay window past the genuine stream.
    The genuine datagrams after it carry newer media, so the window follows them; copies
    of old datagrams (old media) are still dropped as replays."""
    from stemlink.wire.auth import tag

    s, c = make_server(), ClientCore(sample_rate=44100, channels=2)
    _, (acc,) = handshake(s, c)
    blk = np.zeros((2, 256), np.float32)
    first = bytearray(c.audio(blk, 0, 0))
    first[12] ^= 1  # seq + 2^24, re-tagged: authentic
    first[-16:] = tag(c.key, bytes(first[:-16]))
    s.receive_datagram(bytes(first), ADDR, 101.0)
    sent = [c.audio(blk, k * 256, 0) for k in range(1, 150)]  # within the 1 s ring
    for d in sent:
        s.receive_datagram(d, ADDR, 101.0)
    s.on_timer(103.0)
    jobs = jobs_of(s)
    assert [j.timestamp for j in jobs] == [k * 256 for k in range(150)]
    assert s.sessions[acc.session].counters["seq_resyncs"] == 1
    for d in sent[:10]:  # replays of genuine datagrams: old seq and old media
        s.receive_datagram(d, ADDR, 104.0)
    s.on_timer(105.0)
    assert jobs_of(s) == [] and s.sessions[acc.session].counters["replay"] == 10
