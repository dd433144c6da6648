"""Server and client cores wired together in memory: no sockets, no clock, no model."""

import numpy as np
import pytest

from stemlink.udp_client.core import Accepted, ClientCore, Pong, Rejected, ServerBye, State
from stemlink.udp_server.core import ServerCore, StreamSetup
from stemlink.wire import packets as pk
from stemlink.wire.constants import ErrorCode, PacketType

ADDR = ("127.0.0.1", 40000)


def make_server(**kw):
    def make_stream(req):
        if req.hop_frames == 99:
            raise ValueError("H + L exceeds the window")
        return StreamSetup(object(), req.preset or "monitor", 2, 0, "standard", 5119)

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
    jobs = s.take_jobs()
    assert [j.timestamp for j in jobs] == [0, 256, 512, 768]
    sess = s.sessions[acc.session]
    np.testing.assert_allclose(sess.ring[jobs[2].slot], np.round(block * 3 / 8 * 32768)
                               .clip(-32768, 32767) / 32768)
    assert sess.counters["replay"] == 1 and s.counters["drop_replay"] == 1
    other = ClientCore(sample_rate=44100, channels=2)
    other.session, other.key = c.session, b"k" * 32  # forged packet, wrong key
    other._writer = pk.MediaWriter(256, 2, 1)
    s.receive_datagram(other.audio(block, 1024, 0), ADDR, 101.0)
    s.receive_datagram(c.audio(block, 2048, 0), ("127.0.0.1", 999), 101.0)
    assert s.counters["drop_bad-tag"] == 1 and s.counters["drop_wrong-address"] == 1
    assert s.take_jobs() == []


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
    assert gone[0].ring is None and gone[0].setup.separator is None  # buffers released
    (bye, _), = s.take_outbox()
    (ev,) = c.receive(bye, 107.5)
    assert isinstance(ev, ServerBye) and ev.reason == 1


def test_garbage_is_dropped_silently_and_counted():
    s = make_server()
    rng = np.random.default_rng(0)
    for n in (0, 1, 35, 51, 52, 100, 1076, 1500, 65000):
        s.receive_datagram(rng.bytes(n), ADDR, 1.0)
    assert s.take_outbox() == [] and s.take_jobs() == []
    assert s.counters["dropped"] == 9


def test_a_session_that_outruns_the_worker_is_bounded():
    from stemlink.udp_server.core import MAX_PENDING

    s, c = make_server(), ClientCore(sample_rate=44100, channels=2)
    _, (acc,) = handshake(s, c)
    blk = np.zeros((2, 256), np.float32)
    for k in range(MAX_PENDING + 10):  # nobody takes the jobs
        s.receive_datagram(c.audio(blk, k * 256, 0), ADDR, 101.0)
    assert len(s.take_jobs()) == MAX_PENDING
    assert s.sessions[acc.session].counters["overload"] == 10


def test_worker_conceals_gaps_and_keeps_the_timeline(engine):
    """Real separator: blocks 2 and 3 never arrive; the worker feeds silence in their place
    and still sends their STEM blocks, flagged CONCEALED, so no output length is lost."""
    from stemlink.engine.presets import preset
    from stemlink.udp_server.worker import Worker
    from stemlink.wire.constants import Flags

    def make_stream(req):
        sep = engine.separator(preset("monitor"))
        return StreamSetup(sep, "monitor", 2, 0, "standard", sep.delay)

    s = ServerCore(card_stems=["vocals", "accompaniment"], model_name="m", sample_rate=44100,
                   channels=2, make_stream=make_stream)
    c = ClientCore(sample_rate=44100, channels=2)
    _, (acc,) = handshake(s, c)
    sent = []
    w = Worker(lambda d, addr: sent.extend(d), 2)
    blk = np.full((2, 256), 0.1, np.float32)
    for k in (0, 1, 4):
        s.receive_datagram(c.audio(blk, k * 256, 0), ADDR, 101.0)
    jobs = s.take_jobs()
    for j in jobs:
        j.session.taken += 1
        w._process(j.session, j)
    heads = [pk.decode_header(d) for d in sent]
    assert [(h.timestamp, h.stem) for h in heads] == [
        (t, st) for t in (0, 256, 512, 768, 1024) for st in (0, 1)]
    assert [bool(h.flags & Flags.CONCEALED) for h in heads[::2]] == [
        False, False, True, True, False]
    assert [h.seq for h in heads if h.stem == 1] == [0, 1, 2, 3, 4]
    assert s.sessions[acc.session].counters["concealed_blocks"] == 2
