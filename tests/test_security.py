"""Each attack of issue 10 against the sans-IO cores: refused, and counted.

Server and client cores are wired together in memory (no sockets, no clock, no model);
`now` is passed in, so lifetimes and rates are exact."""

import hashlib
import os
import stat

import numpy as np
import pytest

from stemlink.udp_client.core import (
    NO_ACCEPT,
    NO_ANSWER,
    Accepted,
    ClientCore,
    ClientError,
    Rejected,
    State,
)
from stemlink.udp_server.core import ACCEPT_RESENDS, COOKIE_LIFETIME_MS
from stemlink.udp_server.limits import LimitConfig, TokenBucket
from stemlink.udp_server.server import check_exposure
from stemlink.udp_server.stream import Job
from stemlink.wire import auth
from stemlink.wire import packets as pk
from stemlink.wire.auth import Credential
from stemlink.wire.constants import ErrorCode, Features, PacketType
from stemlink.wire.keys import check_key_file, generate_key_file, load_key_file
from tests.test_server_core import ADDR, handshake, make_server

KEY = bytes(range(32))
BLOCK = np.linspace(-0.5, 0.5, 512, dtype=np.float32).reshape(2, 256)


def client(**kw):
    kw.setdefault("key", KEY)
    return ClientCore(sample_rate=44100, channels=2, **kw)


def keyed_server(**kw):
    return make_server(credential=Credential(key=KEY), **kw)


def established(s, now=100.0, addr=ADDR, **kw):
    c = client(**kw)
    _, events = handshake(s, c, addr, now)
    assert isinstance(events[0], Accepted), events
    return c, s.sessions[c.session]


# --------------------------------------------------------------------------- keys
def test_keygen_writes_a_0600_key_and_refuses_to_overwrite(tmp_path):
    p = generate_key_file(tmp_path / "k")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    key = load_key_file(p)
    assert len(key) == 32 and check_key_file(p) is None
    with pytest.raises(auth.AuthError, match="exists"):
        generate_key_file(p)
    assert load_key_file(generate_key_file(p, force=True)) != key


def test_key_file_problems_are_one_line(tmp_path):
    p = generate_key_file(tmp_path / "k")
    os.chmod(p, 0o644)
    assert "chmod 600" in check_key_file(p)
    with pytest.raises(auth.AuthError, match="readable by others"):
        load_key_file(p)
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    assert "64 hex digits" in check_key_file(bad)
    assert "keygen" in check_key_file(tmp_path / "missing")


def test_open_server_refused_off_loopback_unless_insecure():
    none = Credential()
    assert "without a key" in check_exposure("0.0.0.0", none, insecure=False)
    assert check_exposure("0.0.0.0", none, insecure=True) is None
    assert check_exposure("0.0.0.0", Credential(key=KEY), insecure=False) is None
    assert check_exposure("127.0.0.1", none, insecure=False) is None
    assert check_exposure("localhost", none, insecure=False) is None


def test_passphrase_is_stretched_with_scrypt_and_the_servers_salt():
    s = make_server(psk=b"correct horse")
    expected = hashlib.scrypt(b"correct horse", salt=b"stemlink-v2 psk" + s.salt,
                              n=auth.SCRYPT_N, r=8, p=1, maxmem=64 << 20, dklen=32)
    assert s.root == expected
    assert make_server(psk=b"correct horse").root != s.root  # a fresh salt per server
    c = ClientCore(sample_rate=44100, channels=2, psk=b"correct horse")
    _, (acc,) = handshake(s, c)
    assert isinstance(acc, Accepted)


def test_wrong_key_gets_no_session_and_the_client_says_why():
    s = keyed_server()
    c = client(key=bytes(32))
    _, events = handshake(s, c)
    assert events == [] and not s.sessions and s.counters["drop_bad-tag"] == 1
    for k in range(1, 20):
        try:
            c.timer(100.0 + k)
        except ClientError as e:
            assert str(e) == NO_ACCEPT and "wrong key" in str(e)
            break
    else:
        pytest.fail("the client never gave up")
    silent = client()
    silent.connect(0.0)
    with pytest.raises(ClientError) as e:
        for k in range(1, 20):
            silent.timer(float(k))
    assert str(e.value) == NO_ANSWER


def test_session_keys_differ_per_direction_so_reflections_fail():
    s = keyed_server()
    c, sess = established(s)
    assert c.key == sess.rx_key and c.rx_key == sess.key and c.key != c.rx_key
    # the client's own AUDIO reflected back at it as a STEM packet: wrong key
    mirrored = bytearray(c.audio(BLOCK, 0, 0))
    mirrored[3] = PacketType.STEM
    assert c.receive(bytes(mirrored), 101.0) == []
    assert c.counters["drop_bad-tag"] == 1


# --------------------------------------------------------------------------- forged replies
def _forge(t, body, key, session=0):
    return pk.encode(pk.Header(t, 0, session, 0, 0, 0), body, key)


def test_forged_cookie_accept_and_error_are_dropped_and_counted():
    """An off-path attacker does not know the client's nonce. Even knowing the key, a
    reply bound to another nonce is refused."""
    s = keyed_server()
    victim = client()
    hello = victim.connect(100.0)
    other_nonce = os.urandom(16)
    forged_cookie = _forge(PacketType.COOKIE, bytes(48), auth.cookie_key(other_nonce))
    assert victim.receive(forged_cookie, 100.0) == []
    assert victim.state is State.HELLO_SENT
    s.receive_datagram(hello, ADDR, 100.0)
    (cookie, _), = s.take_outbox()
    (_, hello2), = victim.receive(cookie, 100.0)
    hk_other = auth.handshake_keys(KEY, other_nonce, s.salt)  # the right key, wrong nonce
    acc = pk.Accept(44100, 256, 2, 1, 2, 2, 0, 0, 5119, 1024, 1, 0, 0, bytes(16), "m",
                    ("a", "b"))
    for forged in (_forge(PacketType.ERROR, pk.encode_error(ErrorCode.SERVER_FULL, "go"),
                          hk_other.s2c),
                   _forge(PacketType.ACCEPT, pk.encode_accept(acc), hk_other.s2c, 7),
                   _forge(PacketType.ERROR, pk.encode_error(ErrorCode.SERVER_FULL, "go"),
                          auth.public_key())):
        assert victim.receive(forged, 100.0) == []
    assert victim.state is State.COOKIE_SENT and victim.counters["drop_bad-tag"] == 4
    s.receive_datagram(hello2, ADDR, 100.0)
    (accept, _), = s.take_outbox()
    (ev,) = victim.receive(accept, 100.0)
    assert isinstance(ev, Accepted)


def test_replayed_pong_bye_and_error_are_dropped_by_the_client():
    s = keyed_server()
    c, sess = established(s)
    s.receive_datagram(c.ping(101.0), ADDR, 101.0)
    (pong, _), = s.take_outbox()
    assert len(c.receive(pong, 101.0)) == 1
    assert c.receive(pong, 101.1) == [] and c.counters["drop_replay"] == 1


# --------------------------------------------------------------------------- replays
def test_replayed_ping_gets_no_pong_and_does_not_keep_the_session_alive():
    s = keyed_server(idle_timeout=5.0)
    c, sess = established(s)
    ping = c.ping(101.0)
    s.receive_datagram(ping, ADDR, 101.0)
    assert len(s.take_outbox()) == 1
    for t in (103.0, 105.0, 107.0, 109.0):  # an attacker replays it to keep it open
        s.receive_datagram(ping, ADDR, t)
    assert s.take_outbox() == []
    assert sess.counters["replay"] == 4 and s.counters["drop_replay"] == 4
    assert s.counters["accepted_ping"] == 1
    assert [g.id for g in s.expire(106.5)] == [sess.id]  # 5 s after the real ping


def test_replayed_bye_is_refused_and_a_replayed_hello_does_not_reopen():
    s = keyed_server()
    c, sess = established(s)
    hello2 = c._hello(100.0)  # the same cookie, nonce and key as the HELLO that opened it
    s.take_outbox()
    bye = c.bye(101.0)
    s.receive_datagram(bye, ADDR, 101.0)
    assert not s.sessions and s.counters["accepted_bye"] == 1
    s.receive_datagram(bye, ADDR, 101.5)  # session gone: nothing to act on
    s.receive_datagram(hello2, ADDR, 102.0)  # within the cookie's life
    assert not s.sessions and s.take_outbox() == []
    assert s.counters["drop_cookie-reused"] == 1 and s.counters["drop_unknown-session"] == 1


def test_bye_replayed_into_a_live_session_is_dropped():
    s = keyed_server()
    c, sess = established(s)
    s.receive_datagram(c.ping(101.0), ADDR, 101.0)
    stale = pk.encode(pk.Header(PacketType.BYE, 0, c.session, 0, 0, 0), pk.encode_bye(),
                      c.key)  # seq 0 was the PING's: a BYE cannot reuse it
    s.receive_datagram(stale, ADDR, 101.5)
    assert sess.id in s.sessions and s.counters["drop_replay"] == 1


def test_a_cookie_opens_one_session_and_retransmits_are_bounded():
    s = keyed_server(limits=LimitConfig(handshake_burst=100))
    c, sess = established(s)
    hello2 = c._hello(100.0)
    for _ in range(ACCEPT_RESENDS + 5):
        s.receive_datagram(hello2, ADDR, 100.5)
    assert len(s.sessions) == 1
    assert len(s.take_outbox()) == ACCEPT_RESENDS  # the same ACCEPT each time
    assert s.counters["drop_cookie-reused"] == 5
    # the cookie from another port (or a copy of it) opens nothing either
    s.receive_datagram(hello2, ("127.0.0.1", 40001), 100.5)
    assert s.counters["drop_bad-cookie"] == 1 and len(s.sessions) == 1


def test_cookie_lives_exactly_ten_seconds():
    assert COOKIE_LIFETIME_MS == 10_000
    for age, ok in ((9.999, True), (10.0, True), (10.002, False)):
        s, c = keyed_server(), client()
        s.receive_datagram(c.connect(100.25), ADDR, 100.25)
        (cookie, _), = s.take_outbox()
        (_, hello2), = c.receive(cookie, 100.25)
        s.receive_datagram(hello2, ADDR, 100.25 + age)
        assert bool(s.sessions) is ok, age
        assert s.counters["drop_bad-cookie"] == (0 if ok else 1)


# --------------------------------------------------------------------------- limits
def test_sessions_per_address_and_total_cap():
    s = keyed_server(limits=LimitConfig(max_sessions=6, sessions_per_address=4))
    for port in range(4):
        established(s, addr=("10.0.0.2", 5000 + port))
    _, events = handshake(s, client(), ("10.0.0.2", 6000))
    assert isinstance(events[0], Rejected) and events[0].code == ErrorCode.ADDRESS_LIMIT
    assert s.counters["refused_per_address"] == 1
    established(s, addr=("10.0.0.3", 5000))  # a second address still gets in
    established(s, addr=("10.0.0.4", 5000))
    _, events = handshake(s, client(), ("10.0.0.5", 5000))
    assert events[0].code == ErrorCode.SERVER_FULL and s.counters["refused_server_full"] == 1
    assert len(s.sessions) == 6


def test_handshake_flood_from_one_address_is_rate_limited_others_connect():
    s = keyed_server(limits=LimitConfig(handshake_rate=4, handshake_burst=16))
    flood_in = flood_out = 0
    for k in range(1000):  # 1000 HELLOs in one second from one address
        hello = client().connect(100.0)
        s.receive_datagram(hello, ("10.0.0.66", 1000 + k), 100.0 + k / 1000)
        flood_in += len(hello)
        flood_out += sum(len(d) for d, _ in s.take_outbox())
    assert s.counters["cookies"] == 16 + 3  # the burst, then 4 per second
    assert s.counters["drop_handshake-rate"] == 1000 - 19
    assert flood_out <= flood_in  # never an amplifier
    established(s, now=101.0, addr=("10.0.0.7", 5000))


def test_input_beyond_twice_the_rate_is_dropped_archival_is_not():
    s = keyed_server()
    c, sess = established(s)
    rate = 44100 / 256
    n = int(10 * rate)  # ten times real time, for one second
    for k in range(n):
        s.receive_datagram(c.audio(BLOCK, k * 256, 0), ADDR, 101.0 + k / n)
        s.take_messages()
    passed = sess.counters["audio"]
    assert passed == pytest.approx(2 * rate + 2 * rate * 2.0, abs=2)  # rate + 2 s burst
    assert sess.counters["input_rate"] == n - passed
    assert s.counters["drop_input-rate"] == n - passed
    c2, sess2 = established(s, addr=("127.0.0.1", 40002), playout_ms=pk.ARCHIVAL)
    for k in range(n):
        s.receive_datagram(c2.audio(BLOCK, k * 256, 0), ("127.0.0.1", 40002), 101.0 + k / n)
        s.take_messages()
    assert sess2.counters["audio"] == n and sess2.budget is None


def test_redundancy_passes_a_real_time_session_whole_and_gains_no_input_beyond_it():
    """With redundancy the client sends a parity after every block: a real-time session at
    real time passes whole. Beyond it, the blocks handed on (received or repaired) are
    bound like a plain session's, whether the client sends parity or only data."""
    rate = 44100 / 256

    def run(send_parity: bool, features: int) -> tuple[int, int]:
        s = keyed_server()
        c, sess = established(s, features=features)
        n = int(4 * rate)  # four seconds at real time
        for k in range(n):
            for d in c.audio_datagrams(BLOCK, k * 256, 0):
                s.receive_datagram(d, ADDR, 101.0 + k / rate)
            s.take_messages()
        whole = sess.counters["audio"] == n and sess.counters["input_rate"] == 0
        m = int(10 * rate)  # then ten times real time for one second
        before = sess.counters["audio"]
        for k in range(n, n + m):
            dgs = c.audio_datagrams(BLOCK, k * 256, 0)
            for d in dgs if send_parity else dgs[:1]:
                s.receive_datagram(d, ADDR, 101.0 + n / rate + (k - n) / m)
            s.take_messages()
        return whole, sess.counters["audio"] - before

    plain_whole, plain = run(False, 0)
    red_whole, red = run(True, int(Features.REDUNDANCY))
    _, data_only = run(False, int(Features.REDUNDANCY))
    assert plain_whole and red_whole
    burst = 2 * rate + 2 * rate * 2.0  # twice the block rate for 1 s, plus its 2 s burst
    assert plain == pytest.approx(burst, abs=2)
    assert red <= plain + 2 and data_only <= plain + 2


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert [b.take(10.0) for _ in range(4)] == [True, True, True, False]


def test_no_reply_to_an_unvalidated_address_is_larger_than_what_it_sent():
    s = keyed_server()
    rng = np.random.default_rng(1)
    hello = client().connect(1.0)
    sent = received = 0
    variants = [hello] + [bytes(rng.bytes(n)) for n in (52, 118, 600, 1076)]
    for k in range(200):
        d = bytearray(variants[k % len(variants)])
        if k % 3 and len(d) > 40:
            d[rng.integers(40, len(d))] ^= 1 << int(rng.integers(8))
        s.receive_datagram(bytes(d), ("10.9.9.9", 9), 1.0 + k)
        sent += len(d)
        received += sum(len(x) for x, _ in s.take_outbox())
    assert 0 < received <= sent


# --------------------------------------------------------------------------- encryption
needs_aead = pytest.mark.skipif(not auth.aead_available(), reason="cryptography missing")


@needs_aead
def test_encrypted_session_hides_audio_and_rejects_tampering():
    s = keyed_server()
    s.features |= Features.ENCRYPT
    c, sess = established(s, encrypt=True)
    assert c.accept.features & Features.ENCRYPT and isinstance(sess.key, auth.Aead)
    tone = np.full((2, 256), 0.25, np.float32)
    wire = c.audio(tone, 0, 0)
    assert (np.int16(8192).tobytes() * 4) not in wire  # no plaintext PCM on the wire
    s.take_messages()
    s.receive_datagram(wire, ADDR, 101.0)
    (job,) = [m for m in s.take_messages() if isinstance(m, Job)]
    np.testing.assert_array_equal(sess.ring.blocks[job.slot], tone)
    tampered = bytearray(c.audio(tone, 256, 0))
    tampered[100] ^= 1
    s.receive_datagram(bytes(tampered), ADDR, 101.0)
    assert s.take_messages() == [] and s.counters["drop_bad-tag"] == 1
    stem = pk.MediaWriter(256, 2, 1).write(PacketType.STEM, tone, session=sess.id, seq=0,
                                           timestamp=0, send_time=0, key=sess.key, stem=1)
    (blk,) = c.receive(stem, 101.0)
    out = np.zeros((2, 256), np.float32)
    pk.read_media(blk.data, blk.header, out)
    np.testing.assert_allclose(out, tone, atol=1 / 32768)


@needs_aead
def test_encryption_is_required_or_refused_explicitly():
    strict = keyed_server()
    strict.features |= Features.ENCRYPT
    strict.required_features |= Features.ENCRYPT
    _, events = handshake(strict, client())
    assert events[0].code == ErrorCode.BAD_REQUEST and "encrypt" in events[0].message
    plain = keyed_server()  # grants no encryption: the client must not go on in the clear
    c = client(encrypt=True)
    _, events = handshake(plain, c)
    assert isinstance(events[-1], Rejected) and "encryption" in events[-1].message


def test_a_replayed_old_stem_datagram_does_not_clear_the_clients_pending_repairs():
    """A captured STEM datagram replayed far behind the stream (an authentic one: it passes
    the tag) must not reset the client's parity decoder: only a newer sequence number can
    mean the server started over."""
    from stemlink.udp_client.core import StemBlock
    from stemlink.wire.redundancy import DOWNLINK, RedundancyEncoder

    s = keyed_server()
    c, _ = established(s, features=int(Features.REDUNDANCY))
    w = pk.MediaWriter(256, 2, pk.SampleFormat.S16LE)
    enc = RedundancyEncoder(256, w.payload_len, DOWNLINK)
    seq, sent = 0, []
    for k in range(400):
        d = w.write(PacketType.STEM, BLOCK * (k % 7) / 7, session=c.session, seq=seq,
                    timestamp=k * 256, send_time=0, key=c.rx_key, stem=0)
        seq += 1
        sent.append((k, d))
        for ts, body, flags in enc.add(k * 256, pk.payload(d, pk.decode_header(d))):
            sent.append((None, pk.encode(pk.Header(PacketType.STEM, flags, c.session, seq, ts,
                                                   0, 256, 2, pk.SampleFormat.S16LE, 0),
                                         body, c.rx_key)))
            seq += 1
    old = sent[0][1]
    got, lost = set(), 0
    for k, d in sent:
        if k is not None and k >= 200 and k % 2 == 0:
            lost += 1  # the first block of every pair from 200 on is lost
            continue
        for ev in c.receive(d, 102.0):
            got.add(ev.header.timestamp // 256)
        if k is not None and k >= 200:  # an old datagram replayed before the pair's parity
            for ev in c.receive(old, 102.0):
                assert isinstance(ev, StemBlock) and ev.header.timestamp == 0
    assert got == set(range(400))  # every lost block repaired from its parity
    assert c.counters["recovered"] == lost == 100
