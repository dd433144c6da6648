"""`stemlink bench security`: each attack against a live keyed server over loopback, with
the server's own counters (its /metrics) as the judge, plus the client-side forgeries
against the client core.

- amplification: bytes an unvalidated address gets back / bytes it sent (HELLOs, HELLOs
  with bogus cookies, mutated and random datagrams);
- forged and replayed packets accepted, per packet type (server: HELLO, AUDIO, PING, BYE;
  client core: COOKIE, ACCEPT, ERROR, STEM, PONG, BYE);
- a flood from 127.0.0.2 (a key holder: HELLOs as fast as it can and 20 session
  attempts) while 127.0.0.1 connects and streams a real clip;
- a key holder's session sending AUDIO at 10x real time (the input bound).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from stemlink.bench.fuzz import handshake, metrics, start_server
from stemlink.udp_client.core import ClientCore
from stemlink.wire import auth
from stemlink.wire import packets as pk
from stemlink.wire.constants import ErrorCode, PacketType


class _NoModel:
    """The numbers a Stream reads at session start: the client-side part only needs a
    server core to make genuine packets, and never separates audio."""

    delay, memory = 5119, 74751
    latency = SimpleNamespace(support=4096)
    card = SimpleNamespace(n_fft=4096)


ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"


def _accepted(m: dict, t: str) -> int:
    return int(m.get(f'stemlink_packets_accepted_total{{type="{t}"}}', 0))


def _drain(sock: socket.socket, wait: float = 0.3) -> tuple[int, int]:
    """(datagrams, bytes) waiting on a socket after `wait` seconds."""
    time.sleep(wait)
    sock.setblocking(False)
    n = b = 0
    while True:
        try:
            d = sock.recv(4096)
        except (BlockingIOError, OSError):
            return n, b
        n, b = n + 1, b + len(d)


def amplification(server, key: bytes) -> dict:
    rng = np.random.default_rng(3)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ATTACKER, 0))
    out = {}
    total_in = total_out = 0
    for name in ("hello", "hello-bogus-cookie", "mutated-hello", "random"):
        sent = 0
        for k in range(400):
            c = ClientCore(sample_rate=44100, channels=2, key=key)
            if name == "hello":
                d = c.connect(time.monotonic())
            elif name == "hello-bogus-cookie":
                c._cookie = os.urandom(32)
                c._hk = auth.handshake_keys(key, c.nonce, bytes(16))
                d = c._hello(time.monotonic())
            elif name == "mutated-hello":
                b = bytearray(c.connect(time.monotonic()))
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(8))
                d = bytes(b)
            else:
                d = rng.bytes(int(rng.integers(0, 1200)))
            sock.sendto(d, server)
            sent += len(d)
            if k % 50 == 49:
                time.sleep(0.01)
        n, got = _drain(sock)
        out[name] = {"bytes_sent": sent, "bytes_received": got, "replies": n,
                     "ratio": round(got / sent, 3)}
        total_in, total_out = total_in + sent, total_out + got
        time.sleep(4.0)  # let the handshake bucket refill between kinds
    sock.close()
    out["all"] = {"bytes_sent": total_in, "bytes_received": total_out,
                  "ratio": round(total_out / total_in, 3)}
    return out


def forged_server_side(server, key: bytes, mport: int) -> dict:
    """Forged and replayed packets against the live server: accepted = what its counters
    say passed every check."""
    res = {}
    wrong = bytes(32)
    m0 = metrics(mport)
    # HELLO with a cookie, under the wrong key, from 10 addresses: no session
    opened = sum(handshake(server, wrong, f"127.0.0.{20 + k}", False, timeout=1.0)
                 is not None for k in range(10))
    m1 = metrics(mport)
    res["HELLO (wrong key)"] = {"sent": 10, "accepted": opened +
                                _accepted(m1, "hello") - _accepted(m0, "hello")}
    s = handshake(server, key, OTHER, False)
    assert s is not None, "the real client could not connect"
    core = s.core
    block = np.zeros((2, 256), np.float32)
    audio = [core.audio(block, k * 256, 0) for k in range(8)]
    ping, hello2 = core.ping(time.monotonic()), s.sent[-1]
    for d in audio + [ping]:
        s.sock.sendto(d, server)
    time.sleep(0.3)
    _drain(s.sock, 0)
    base = metrics(mport)
    # forged: same session id, wrong key
    fake = ClientCore(sample_rate=44100, channels=2, key=wrong)
    fake.session, fake.key = core.session, auth.session_keys(
        wrong, core.nonce, core.accept.server_nonce, core.session).c2s
    fake._writer = pk.MediaWriter(256, 2, 1)
    forged = {"AUDIO": [fake.audio(block, 4096 + k * 256, 0) for k in range(50)],
              "PING": [fake.ping(time.monotonic()) for _ in range(50)],
              "BYE": [fake._control(PacketType.BYE, pk.encode_bye(), 0.0) for _ in range(50)]}
    for ds in forged.values():
        for d in ds:
            s.sock.sendto(d, server)
    time.sleep(0.3)
    replies, _ = _drain(s.sock, 0)
    m2 = metrics(mport)
    for t, ds in forged.items():
        res[f"{t} (forged)"] = {"sent": len(ds), "accepted": _accepted(m2, t.lower()) -
                                _accepted(base, t.lower())}
    res["PING (forged)"]["replies"] = replies
    # replayed: the session's own packets again, from its own address
    for d in audio * 5:
        s.sock.sendto(d, server)
    for _ in range(40):
        s.sock.sendto(ping, server)
    time.sleep(0.3)
    replies, _ = _drain(s.sock, 0)
    m3 = metrics(mport)
    res["AUDIO (replayed)"] = {"sent": 40, "accepted": _accepted(m3, "audio") -
                               _accepted(m2, "audio")}
    res["PING (replayed)"] = {"sent": 40, "accepted": _accepted(m3, "ping") -
                              _accepted(m2, "ping"), "replies": replies}
    # BYE, then its replay, then the HELLO that opened the session (cookie replay)
    bye = core.bye(time.monotonic())
    s.sock.sendto(bye, server)
    time.sleep(0.2)
    m4 = metrics(mport)
    for _ in range(20):
        s.sock.sendto(bye, server)
        s.sock.sendto(hello2, server)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((ATTACKER, 0))
    for _ in range(20):
        other.sendto(hello2, server)  # the same HELLO from another address
    time.sleep(0.3)
    replies, _ = _drain(s.sock, 0)
    replies2, _ = _drain(other, 0)
    other.close()
    m5 = metrics(mport)
    res["BYE (replayed)"] = {"sent": 20, "accepted": _accepted(m5, "bye") -
                             _accepted(m4, "bye")}
    res["HELLO (replayed after BYE, same and other address)"] = {
        "sent": 40, "accepted": _accepted(m5, "hello") - _accepted(m4, "hello"),
        "replies": replies + replies2}
    s.sock.close()
    return res


def forged_client_side(key: bytes) -> dict:
    """Forged and replayed server packets fed to a client core mid-handshake and in a
    session: accepted = events the core produced from them."""
    from stemlink.udp_server.core import ServerCore, StreamSetup

    srv = ServerCore(card_stems=["vocals", "accompaniment"], model_name="m",
                     sample_rate=44100, channels=2, credential=auth.Credential(key=key),
                     make_stream=lambda r: StreamSetup(_NoModel(), "monitor", 2, 0,
                                                       "standard", 5119))
    addr, now = ("127.0.0.1", 1), 100.0
    c = ClientCore(sample_rate=44100, channels=2, key=key)
    res = {}
    hello = c.connect(now)
    other = os.urandom(16)

    def forge(t, body, k, session=0, seq=0):
        return pk.encode(pk.Header(t, 0, session, seq, 0, 0), body, k)

    n = 100
    res["COOKIE (other nonce)"] = {"sent": n, "accepted": sum(
        len(c.receive(forge(PacketType.COOKIE, os.urandom(48), auth.cookie_key(other)), now))
        for _ in range(n))}
    srv.receive_datagram(hello, addr, now)
    (cookie, _), = srv.take_outbox()
    (_, hello2), = c.receive(cookie, now)
    hk = auth.handshake_keys(key, other, srv.salt)
    acc = pk.Accept(44100, 256, 2, 1, 2, 2, 0, 0, 5119, 1024, 1, 0, 0, bytes(16), "m",
                    ("a", "b"))
    res["ACCEPT (other nonce)"] = {"sent": n, "accepted": sum(
        len(c.receive(forge(PacketType.ACCEPT, pk.encode_accept(acc), hk.s2c, 7), now))
        for _ in range(n))}
    res["ERROR (other nonce)"] = {"sent": n, "accepted": sum(
        len(c.receive(forge(PacketType.ERROR, pk.encode_error(ErrorCode.SERVER_FULL, "x"),
                            hk.s2c), now)) for _ in range(n))}
    srv.receive_datagram(hello2, addr, now)
    (accept, _), = srv.take_outbox()
    c.receive(accept, now)
    sess = srv.sessions[c.session]
    wrong = bytes(32)
    stem = pk.MediaWriter(256, 2, 1)
    res["STEM (forged)"] = {"sent": n, "accepted": sum(len(c.receive(stem.write(
        PacketType.STEM, np.zeros((2, 256), np.float32), session=c.session, seq=k,
        timestamp=k * 256, send_time=0, key=wrong), now)) for k in range(n))}
    srv.receive_datagram(c.ping(now), addr, now)
    (pong, _), = srv.take_outbox()
    c.receive(pong, now)
    res["PONG (replayed)"] = {"sent": n, "accepted": sum(len(c.receive(pong, now))
                                                         for _ in range(n))}
    res["BYE (forged)"] = {"sent": n, "accepted": sum(len(c.receive(
        forge(PacketType.BYE, pk.encode_bye(), wrong, c.session, 100 + k), now))
        for k in range(n))}
    srv.close(sess, "test", now, notify=True)
    (bye, _), = srv.take_outbox()
    c.receive(bye, now)
    c.state = c.state.ESTABLISHED  # as if still streaming: the replay must still fail
    res["BYE (replayed)"] = {"sent": n, "accepted": sum(len(c.receive(bye, now))
                                                        for _ in range(n))}
    return res


MUTATED_PER_ROUND = 10  # per held session, every 10 ms round: ~1,000/s each


def _attacker(server, key: bytes, seconds: float, out) -> None:
    """A separate process (as on another machine): HELLOs as fast as it can, plus up to 20
    real session attempts (every other one with redundancy) whose sessions it keeps alive
    with PINGs and feeds with its own valid packets replayed, bit-flipped, and changed
    then re-tagged (the fuzzer's mutations, MUTATED_PER_ROUND each round)."""
    import random

    from stemlink.bench.fuzz import Mutator

    rng = random.Random(7)
    mut = Mutator(rng)
    stats = {"hellos": 0, "sessions": 0, "attempts": 0, "mutated": 0}
    held = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ATTACKER, 0))
    sock.setblocking(False)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if stats["attempts"] < 20 and time.monotonic() - t0 > 0.2 * stats["attempts"]:
            stats["attempts"] += 1
            s = handshake(server, key, ATTACKER, False, timeout=2.0,
                          redundancy=stats["attempts"] % 2 == 0)
            if s is not None:
                stats["sessions"] += 1
                held.append(s)
                for d in mut.valid_audio(s):  # valid packets to replay and mutate
                    s.sock.sendto(d, server)
        for _ in range(200):
            c = ClientCore(sample_rate=44100, channels=2, key=key)
            try:
                sock.sendto(c.connect(time.monotonic()), server)
                stats["hellos"] += 1
            except OSError:
                pass
        for s in held:  # keep the held sessions alive, and abuse them
            try:
                s.sock.sendto(mut.control(s), server)
                for _ in range(MUTATED_PER_ROUND):
                    r = rng.random()
                    d = (mut.flip(rng.choice(s.sent)) if r < 0.4 else
                         mut.field(s) if r < 0.8 else rng.choice(s.sent))
                    s.sock.sendto(d, server)
                    stats["mutated"] += 1
            except OSError:
                pass
        time.sleep(0.01)
    sock.close()
    for s in held:
        s.sock.close()
    out.put(stats)


def flood(server, key: bytes, mport: int, model: str, tmp: Path) -> dict:
    """127.0.0.2 floods HELLOs and opens as many sessions as it can (another process);
    meanwhile a real client on 127.0.0.1 connects and streams a clip."""
    import multiprocessing as mp
    import threading

    import soundfile as sf

    from stemlink.audio import read_audio
    from stemlink.export.checkpoint import example_audio
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, send_file

    stop = threading.Event()
    stats = {"open_max": 0}

    x, sr = read_audio(example_audio())
    clip = tmp / "flood-clip.wav"
    sf.write(clip, x[:, :5 * sr].T, sr, subtype="PCM_16")
    def watch() -> None:  # the server's own count of open sessions
        while not stop.is_set():
            stats["open_max"] = max(stats["open_max"],
                                    int(metrics(mport).get("stemlink_sessions_open", 0)))
            time.sleep(0.2)

    # the same clip without a flood first: what this machine's load alone costs
    calm = run_loop(send_file(SendOptions(clip, server, None, key=key, preset="monitor")))
    time.sleep(1.0)
    m0 = metrics(mport)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    clip_s = sf.info(str(clip)).duration
    attacker = ctx.Process(target=_attacker, args=(server, key, 4.0 + clip_s + 4.0, q),
                           daemon=True)
    attacker.start()
    wt = threading.Thread(target=watch, daemon=True)
    wt.start()
    time.sleep(4.0)  # the flood and the attacker's sessions are up before the real client
    open_before = stats["open_max"]
    t0 = time.monotonic()
    rep = run_loop(send_file(SendOptions(clip, server, None, key=key, preset="monitor")))
    elapsed = time.monotonic() - t0
    stop.set()
    wt.join(5)
    stats.update(q.get(timeout=60))
    attacker.join(10)
    time.sleep(0.5)
    m1 = metrics(mport)  # after the whole flood: every HELLO it sent is accounted for
    drops = {}
    for k, v in m1.items():
        if k.startswith("stemlink_drops_total"):
            d = v - m0.get(k, 0)
            if d:
                drops[k.split('"')[1]] = int(d)
    return {
        "attacker": ATTACKER, "attacker_hellos": stats["hellos"],
        "attacker_mutated_packets": stats["mutated"],
        "attacker_session_attempts": stats["attempts"],
        "attacker_sessions_opened": stats["sessions"],
        "server_sessions_open_before_second": open_before,
        "server_sessions_open_max": stats["open_max"],
        "refused_per_address": int(m1.get("stemlink_errors_sent_total{code=\"address_limit\"}",
                                          0) - m0.get(
            "stemlink_errors_sent_total{code=\"address_limit\"}", 0)),
        "hellos_received_by_server": int(m1.get('stemlink_datagrams_received_total{type="hello"}',
                                                0) - m0.get(
            'stemlink_datagrams_received_total{type="hello"}', 0)),
        "cookies_sent_during_flood": int(m1.get("stemlink_cookies_sent_total", 0) -
                                         m0.get("stemlink_cookies_sent_total", 0)),
        "drops": drops,
        "second_address": "127.0.0.1", "second_connected": True,
        "second_received": rep.received, "second_expected": rep.expected,
        "second_lost": rep.lost, "second_late": rep.late,
        "second_seconds": round(elapsed, 1),
        "second_concealed": rep.concealed,
        "without_flood_received": calm.received, "without_flood_lost": calm.lost,
        "without_flood_concealed": calm.concealed, "without_flood_late": calm.late,
    }


def input_rate(server, key: bytes, mport: int, redundancy: bool = False) -> dict:
    """AUDIO at 10x real time from one key holder's session. redundancy: the session asks
    for it (its datagram bound doubles) but sends data only, which must gain it no more
    blocks than a plain session: every datagram not dropped is one block processed."""
    s = handshake(server, key, OTHER, False, redundancy=redundancy)
    assert s is not None
    rate = 44100 / 256
    seconds, factor = 5.0, 10
    block = np.zeros((2, 256), np.float32)
    m0 = metrics(mport)
    n = int(seconds * rate * factor)
    t0 = time.monotonic()
    for k in range(n):
        due = t0 + k / (rate * factor)
        while time.monotonic() < due:
            time.sleep(0.0005)
        s.sock.sendto(s.core.audio(block, k * 256, 0), server)
        if k % 64 == 0:
            _drain(s.sock, 0)
    time.sleep(0.3)
    m1 = metrics(mport)
    s.sock.sendto(s.core.bye(time.monotonic()), server)
    s.sock.close()
    acc = _accepted(m1, "audio") - _accepted(m0, "audio")
    dropped = int(m1.get('stemlink_drops_total{reason="input-rate"}', 0) -
                  m0.get('stemlink_drops_total{reason="input-rate"}', 0))
    return {"sent": n, "seconds": seconds, "factor_sent": factor, "redundancy": redundancy,
            "accepted": acc, "dropped_input_rate": dropped, "blocks_processed": n - dropped,
            "accepted_per_second": round(acc / seconds, 1),
            "real_time_packets_per_second": round(rate, 1),
            "bound": "2 x rate, plus a 2 s burst at that rate"}


def bench_security(model: str) -> dict:
    from stemlink.wire.keys import generate_key_file, load_key_file

    tmp = Path(tempfile.mkdtemp(prefix="stemlink-sec-"))
    key_file = generate_key_file(tmp / "key")
    key = load_key_file(key_file)
    child, server, mport = start_server(model, key_file, tmp / "stats.json",
                                        ["--idle-timeout", "3"])
    try:
        from stemlink.bench.machine import describe, machine

        r = {"command": "stemlink bench security", "machine": describe(machine()),
             "amplification": amplification(server, key)}
        time.sleep(4.0)
        r["forged_server"] = forged_server_side(server, key, mport)
        r["forged_client"] = forged_client_side(key)
        time.sleep(4.0)
        r["flood"] = flood(server, key, mport, model, tmp)
        time.sleep(4.0)
        r["input_rate"] = input_rate(server, key, mport)
        time.sleep(4.0)
        r["input_rate_redundancy"] = input_rate(server, key, mport, redundancy=True)
        r["server_alive"] = child.proc.poll() is None
        r["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        child.stop()
    return r


def render(r: dict) -> str:
    lines = [f"command: {r['command']}", f"machine: {r['machine']}", "",
             f"amplification (unvalidated address {ATTACKER}):",
             "| sent | bytes in | bytes out | out / in |", "|---|---|---|---|"]
    for k, v in r["amplification"].items():
        lines.append(f"| {k} | {v['bytes_sent']} | {v['bytes_received']} | {v['ratio']} |")
    h = r["amplification"]["hello"]
    if h.get("replies"):
        per_in, per_out = h["bytes_sent"] / 400, h["bytes_received"] / h["replies"]
        lines.append(f"\neach answered HELLO: {per_in:.0f} B in, {per_out:.0f} B out "
                     f"(ratio {per_out / per_in:.2f}); {h['replies']} of 400 were answered "
                     f"(the rest hit the handshake rate limit)")
    lines += ["", "forged or replayed packets accepted:", "| packet | where | sent | accepted |",
              "|---|---|---|---|"]
    for k, v in r["forged_server"].items():
        lines.append(f"| {k} | server | {v['sent']} | {v['accepted']} |")
    for k, v in r["forged_client"].items():
        lines.append(f"| {k} | client core | {v['sent']} | {v['accepted']} |")
    f = r["flood"]
    lines += ["", f"flood from {f['attacker']}: {f['attacker_hellos']} HELLOs sent "
              f"and {f.get('attacker_mutated_packets', 0)} replayed or mutated packets of "
              "its own sessions; "
              f"({f['hellos_received_by_server']} HELLOs from anyone reached the server), "
              f"{f['attacker_session_attempts']} session attempts -> "
              f"{f['attacker_sessions_opened']} sessions known to it (limit 4; server: "
              f"{f['server_sessions_open_before_second']} open before the second address, "
              f"at most {f['server_sessions_open_max']} with it), "
              f"{f['refused_per_address']} refused per address, "
              f"{f['cookies_sent_during_flood']} cookies sent; drops "
              + ", ".join(f"{k} {v}" for k, v in f["drops"].items()),
              f"meanwhile {f['second_address']} connected and streamed: received "
              f"{f['second_received']}/{f['second_expected']}, lost {f['second_lost']}, "
              f"late {f.get('second_late', '-')}, concealed {f['second_concealed']} (the "
              f"same clip just before, without the flood: received "
              f"{f['without_flood_received']}, lost {f['without_flood_lost']}, late "
              f"{f.get('without_flood_late', '-')}, concealed "
              f"{f['without_flood_concealed']})"]
    i = r["input_rate"]
    lines += ["", f"input rate: sent {i['sent']} AUDIO in {i['seconds']} s "
              f"({i['factor_sent']}x real time); accepted {i['accepted']} "
              f"({i['accepted_per_second']}/s vs real time {i['real_time_packets_per_second']}"
              f"/s), dropped {i['dropped_input_rate']} (input-rate)"]
    j = r.get("input_rate_redundancy")
    if j:
        lines += [f"the same from a session with redundancy sending data only: blocks "
                  f"processed {j['blocks_processed']} (plain session: "
                  f"{i['blocks_processed']}), dropped {j['dropped_input_rate']} (input-rate)"]
    lines.append(f"\nload average during the run: {r.get('load_average')}")
    return "\n".join(lines)
