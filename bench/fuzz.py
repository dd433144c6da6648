"""`stemlink bench fuzz`: a million datagrams against a live server, then a real session.

The server runs as a child process with a key file and metrics. The fuzzer holds the key
(the worst case: a malicious key holder) and keeps real sessions open from several
loopback addresses, so most datagrams are mutated *valid* packets:

- bit flips (1-4 bits) anywhere in a valid packet;
- truncations and extensions;
- changed header fields (type, flags, stem, channels, format, session, seq, timestamp,
  frames, payload length) and payload bytes (NaN/Inf floats), re-tagged or re-encrypted
  with the right key so that they reach the checks behind authentication;
- replays of valid packets (AUDIO, PING, BYE, HELLO with a used cookie);
- valid AUDIO in sequence, and random bytes.

Afterwards the server must be alive, healthy, without internal errors, and a fresh session
must stream a real clip with every block back and stems identical in quality to `separate`
(SDR >= 40 dB against it).
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemlink.bench.procs import Child, free_port
from stemlink.errors import StemlinkError
from stemlink.udp_client.core import Accepted, ClientCore
from stemlink.wire import auth
from stemlink.wire.constants import HEADER_SIZE, TAG_SIZE, Features, SampleFormat

SOURCES = [f"127.0.0.{k}" for k in range(2, 10)]  # 127.0.0.1 is kept for the final check
BATCH = 256
_HDR = struct.Struct(">HBBBBBBIIQQHH")


@dataclass
class LiveSession:
    core: ClientCore
    sock: socket.socket
    plain: list[bytes] = field(default_factory=list)  # header+payload of valid packets
    sent: list[bytes] = field(default_factory=list)  # valid datagrams, for replays
    next_ts: int = 0


def metrics(port: int) -> dict[str, float]:
    """Scrape the server's Prometheus text into {name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status
    except OSError as e:
        return getattr(e, "code", 0) or 0


def start_server(model: str, key_file: Path, stats: Path, extra: list[str] = ()) -> tuple:
    port, mport = free_port(), free_port(socket.SOCK_STREAM)
    child = Child(["-m", "stemlink", "serve", "--model", model, "--port", str(port),
                   "--key-file", str(key_file), "--metrics-port", str(mport),
                   "--log-level", "warning", "--compute-stats", str(stats), *extra],
                  "stemlink serving", stats)
    return child, ("127.0.0.1", port), mport


def handshake(server, key: bytes, source: str, encrypt: bool, redundancy: bool = False,
              timeout: float = 2.0) -> LiveSession | None:
    """A real handshake from `source` (blocking socket); None if refused or unanswered.
    redundancy: ask for it, so that the session's parity datagrams (and their mutations)
    reach the server's parity decoder."""
    core = ClientCore(sample_rate=44100, channels=2, key=key, encrypt=encrypt,
                      features=int(Features.REDUNDANCY) if redundancy else 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(0.25)
    sess = LiveSession(core, sock)
    out = core.connect(time.monotonic())
    sess.sent.append(out)
    sock.sendto(out, server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            again = core.timer(time.monotonic()) if core._tries < core.HELLO_TRIES else None
            if again:
                sock.sendto(again, server)
            continue
        for ev in core.receive(data, time.monotonic()):
            if isinstance(ev, tuple):
                sess.sent.append(ev[1])
                sock.sendto(ev[1], server)
            elif isinstance(ev, Accepted):
                sock.setblocking(False)
                return sess
            else:
                sock.close()
                return None
    sock.close()
    return None


def _plain(datagram: bytes, key) -> bytes:
    """header + payload (decrypted) of a datagram we sealed."""
    opened = auth.open_packet(key, datagram)
    return opened[:-TAG_SIZE]


def _reseal(plain: bytearray, key) -> bytes:
    buf = bytearray(plain) + bytes(TAG_SIZE)
    return auth.seal(key, buf)


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.block = np.zeros((2, 256), np.float32)

    def valid_audio(self, s: LiveSession) -> list[bytes]:
        """The next block's AUDIO datagram and, with redundancy, its parity: all of them
        join the pools that replays and mutations draw from."""
        self.block[:] = self.rng.uniform(-0.3, 0.3)
        out = s.core.audio_datagrams(self.block, s.next_ts, time.monotonic_ns())
        s.next_ts += 256
        for d in out:
            s.sent.append(d)
            s.plain.append(_plain(d, s.core.key))
        if len(s.sent) > 64:
            del s.sent[1:17]  # keep the HELLOs (index 0 and 1) and recent packets
        if len(s.plain) > 32:
            del s.plain[:8]
        return out

    def control(self, s: LiveSession) -> bytes:
        d = s.core.ping(time.monotonic())
        s.sent.append(d)
        s.plain.append(_plain(d, s.core.key))
        return d

    def flip(self, d: bytes) -> bytes:
        b = bytearray(d)
        for _ in range(self.rng.randint(1, 4)):
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
        return bytes(b)

    def cut(self, d: bytes) -> bytes:
        r = self.rng.random()
        if r < 0.6:
            return d[:self.rng.randrange(len(d))]
        return d + os.urandom(self.rng.randint(1, 200))

    def field(self, s: LiveSession) -> bytes:
        """A header field or payload changed, then sealed with the session's key."""
        p = bytearray(self.rng.choice(s.plain))
        f = self.rng.randrange(12)
        r = self.rng
        if f == 0:
            p[3] = r.randint(0, 12)  # type
        elif f == 1:
            p[4] = r.choice((1, 2, 4, 6, 8, 0x80, 7))  # flags (6: a lone parity copy)
        elif f == 2:
            p[5] = r.randint(0, 20)  # stem
        elif f == 3:
            p[6] = r.randint(0, 3)  # channels
        elif f == 4:
            p[7] = r.randint(0, 3)  # format
        elif f == 5:
            struct.pack_into(">I", p, 8, r.getrandbits(32))  # session
        elif f == 6:
            struct.pack_into(">I", p, 12, r.choice((0, 1, 0xFFFFFFFF, r.getrandbits(32))))
        elif f == 7:  # timestamp: misaligned, far future, far past, u64 max
            ts = struct.unpack_from(">Q", p, 16)[0]
            struct.pack_into(">Q", p, 16, r.choice((ts + 1, ts + 10**7, 0, 2**64 - 256,
                                                    max(ts - 256 * 40, 0))))
        elif f == 8:
            struct.pack_into(">H", p, 32, r.choice((0, 64, 128, 255, 256, 512, 65535)))
        elif f == 9:  # payload length claims something else; the datagram is resized
            n = r.choice((0, 1, 511, 1023, 1024, 1025, 2048))
            struct.pack_into(">H", p, 34, n)
            p = p[:HEADER_SIZE] + bytes(n) if r.random() < 0.5 else p
        elif f == 10 and len(p) > HEADER_SIZE + 8:  # payload: NaN/Inf or extreme values
            val = r.choice((b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff"))
            for _ in range(8):
                k = r.randrange(HEADER_SIZE, len(p) - 3)
                p[k:k + 4] = val
            p[7] = r.choice((SampleFormat.S16LE, SampleFormat.F32LE))
        else:  # several fields at once
            p[3], p[6], p[7] = r.randint(1, 9), r.randint(0, 2), r.randint(0, 2)
            struct.pack_into(">H", p, 32, r.choice((64, 128, 256)))
        return _reseal(p, s.core.key)

    def garbage(self) -> bytes:
        n = self.rng.choice((0, 1, 36, 51, 52, 53, 118, 600, 1076, 1400))
        d = bytearray(os.urandom(n))
        if n >= 4 and self.rng.random() < 0.5:
            d[0:3] = b"SL\x02"  # past the magic and version checks
        return bytes(d)


def fuzz(model: str, datagrams: int, seed: int, log_path: str | None,
         check_audio: str | None = None) -> dict:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="stemlink-fuzz-"))
    key_file = auth_key = None
    from stemlink.wire.keys import generate_key_file, load_key_file

    key_file = generate_key_file(tmp / "key")
    auth_key = load_key_file(key_file)
    child, server, mport = start_server(model, key_file, tmp / "stats.json",
                                        ["--idle-timeout", "2", "--max-sessions", "8"])
    logf = open(log_path, "a") if log_path else None  # noqa: SIM115 (closed below)

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    mut = Mutator(rng)
    raw = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in SOURCES]
    for sk, src in zip(raw, SOURCES, strict=True):
        sk.bind((src, 0))
        sk.setblocking(False)
    sessions: list[LiveSession] = []
    kinds: dict[str, int] = {}
    sent = send_errors = 0
    t0 = time.monotonic()
    from stemlink.bench.machine import describe, machine

    result: dict = {"command": f"stemlink bench fuzz --datagrams {datagrams} --seed {seed}",
                    "machine": describe(machine()), "target": datagrams}
    try:
        rx = 0.0
        last_scrape = 0.0
        while rx < datagrams:
            if len(sessions) < 6 or rng.random() < 0.02:  # keep real sessions open
                src = rng.choice(SOURCES)
                s = handshake(server, auth_key, src, encrypt=rng.random() < 0.5,
                                  redundancy=rng.random() < 0.5)
                if s is not None:
                    sessions.append(s)
                    for _ in range(4):
                        for d in mut.valid_audio(s):
                            s.sock.sendto(d, server)
                        s.sock.sendto(mut.control(s), server)
                if len(sessions) > 12:
                    old = sessions.pop(0)
                    old.sock.close()
            for _ in range(BATCH):
                after: list[bytes] = []
                r = rng.random()
                s = rng.choice(sessions) if sessions else None
                if s is None or r < 0.08:
                    kind, d, sock = "garbage", mut.garbage(), rng.choice(raw)
                elif r < 0.38:
                    kind, d, sock = "bit-flip", mut.flip(rng.choice(s.sent)), s.sock
                elif r < 0.48:
                    kind, d, sock = "truncate-extend", mut.cut(rng.choice(s.sent)), s.sock
                elif r < 0.80:
                    kind, d, sock = "field-resealed", mut.field(s), s.sock
                elif r < 0.92:
                    kind, d, sock = "replay", rng.choice(s.sent), \
                        rng.choice((s.sock, s.sock, rng.choice(raw)))
                elif r < 0.97:
                    d, *after = mut.valid_audio(s)  # its parity (redundancy) right after
                    kind, sock = "valid-audio", s.sock
                else:
                    kind, d, sock = "valid-ping", mut.control(s), s.sock
                try:
                    sock.sendto(d, server)
                    sent += 1
                    kinds[kind] = kinds.get(kind, 0) + 1
                    for x in after:
                        sock.sendto(x, server)
                        sent += 1
                        kinds["valid-parity"] = kinds.get("valid-parity", 0) + 1
                except BlockingIOError:
                    send_errors += 1
                except OSError:
                    send_errors += 1
            for s in sessions:  # drain replies so their buffers never fill
                try:
                    while True:
                        s.sock.recv(4096)
                except (BlockingIOError, OSError):
                    pass
            now = time.monotonic()
            if now - last_scrape > 2.0:
                last_scrape = now
                if child.proc.poll() is not None:
                    raise StemlinkError("the server died during the fuzz")
                m = metrics(mport)
                rx = m.get("stemlink_datagrams_received_all_total", 0.0)
                say(f"sent {sent}, server received {int(rx)}, sessions open "
                    f"{int(m.get('stemlink_sessions_open', 0))}, "
                    f"{sent / (now - t0):.0f}/s")
                if sent - rx > 20000:  # the kernel is dropping: let the server catch up
                    time.sleep(0.5)
        elapsed = time.monotonic() - t0
        for s in sessions:
            s.sock.close()
        m = metrics(mport)
        say("fuzzing done; waiting for fuzz sessions to expire, then a real session")
        time.sleep(3.0)
        result.update(fuzz_seconds=round(elapsed, 1), sent=sent, send_errors=send_errors,
                      kinds=kinds, server_received=int(m.get(
                          "stemlink_datagrams_received_all_total", 0)),
                      drops={k.split('"')[1]: int(v) for k, v in m.items()
                             if k.startswith("stemlink_drops_total")},
                      internal_errors=int(m.get(
                          'stemlink_drops_total{reason="internal-error"}', 0)),
                      healthz_after=healthz(mport), alive_after=child.proc.poll() is None)
        result["after"] = _check_session(server, auth_key, model, tmp, check_audio)
        result["alive_at_end"] = child.proc.poll() is None
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for sk in raw:
            sk.close()
        child.stop()
        log = "".join(child.log)
        result["server_tracebacks"] = log.count("Traceback")
        result["crashes"] = (int(not result.get("alive_at_end", False))
                             + result["server_tracebacks"])
        say(json.dumps({k: v for k, v in result.items() if k != "drops"}))
        if logf:
            logf.close()
    return result


def _check_session(server, key: bytes, model: str, tmp: Path, audio: str | None) -> dict:
    """A fresh client streams a real clip; its stems must match `separate`."""
    import soundfile as sf

    from stemlink.audio import read_audio
    from stemlink.bench.fidelity import sdr
    from stemlink.export.checkpoint import example_audio
    from stemlink.loop import run_loop
    from stemlink.separate import separate_file
    from stemlink.udp_client.sender import SendOptions, send_file

    x, sr = read_audio(audio or example_audio())
    clip = tmp / "clip.wav"
    sf.write(clip, x[:, :6 * sr].T, sr, subtype="PCM_16")
    rep = run_loop(send_file(SendOptions(clip, server, tmp / "net", realtime=False,
                                         preset="monitor", key=key)))
    separate_file(clip, model, tmp / "ref", preset="monitor")
    sdrs = {}
    for name in rep.stems:
        a, _ = sf.read(tmp / "ref" / f"{name}.wav", always_2d=True)
        b, _ = sf.read(tmp / "net" / f"{name}.wav", always_2d=True)
        sdrs[name] = round(float(sdr(a, b)), 1)
    return {"received": rep.received, "expected": rep.expected, "lost": rep.lost,
            "sdr_vs_separate_db": sdrs}


def render(r: dict) -> str:
    a = r.get("after", {})
    lines = [
        f"command: {r['command']}",
        f"machine: {r['machine']}, load average at the end {r.get('load_average')}",
        f"datagrams sent {r['sent']} in {r['fuzz_seconds']} s; received by the server "
        f"{r['server_received']}",
        "by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items())),
        f"crashes {r['crashes']} (server alive {r['alive_at_end']}, tracebacks "
        f"{r['server_tracebacks']}, internal errors {r['internal_errors']}, /healthz "
        f"{r['healthz_after']})",
        f"after: received {a.get('received')}/{a.get('expected')} stem blocks, lost "
        f"{a.get('lost')}, SDR vs separate {a.get('sdr_vs_separate_db')} dB",
        "server drops by reason: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["drops"].items(), key=lambda kv: -kv[1])),
    ]
    return "\n".join(lines)
