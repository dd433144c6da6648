"""`stemlink bench aead`: what --encrypt costs per packet, against the BLAKE2s tag.

Times whole-packet protection as the hot paths do it: MediaWriter.write (encode s16 PCM +
seal) and open_packet (verify, or decrypt) for a full 256-frame stereo s16 block (1024-byte
payload, the largest datagram), median of several runs of many packets each."""

from __future__ import annotations

import statistics
import time

import numpy as np

from stemlink.wire import auth
from stemlink.wire import packets as pk
from stemlink.wire.constants import PacketType


def _per_packet_us(fn, n: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        for k in range(n):
            fn(k)
        runs.append((time.perf_counter_ns() - t) / n / 1000)
    return statistics.median(runs)


def bench_aead(n: int = 20000, repeats: int = 7) -> dict:
    import cryptography

    from stemlink.bench.machine import describe, machine

    rng = np.random.default_rng(0)
    block = rng.uniform(-0.5, 0.5, (2, 256)).astype(np.float32)
    w = pk.MediaWriter(256, 2, 1)
    keys = {"blake2s-tag": bytes(range(32)), "chacha20-poly1305": auth.Aead(bytes(range(32)))}
    out = {"command": f"stemlink bench aead --packets {n}", "machine": f"{describe(machine())}, "
           f"cryptography {cryptography.__version__}",
           "packet_bytes": len(w.write(PacketType.STEM, block, session=1, seq=0, timestamp=0,
                                       send_time=0, key=keys["blake2s-tag"]))}
    for name, key in keys.items():
        def seal(k, key=key):
            w.write(PacketType.STEM, block, session=1, seq=k, timestamp=k * 256, send_time=0,
                    key=key)

        sealed = [w.write(PacketType.STEM, block, session=1, seq=k, timestamp=k * 256,
                          send_time=0, key=key) for k in range(256)]

        def open_(k, key=key, sealed=sealed):
            pk.open_packet(sealed[k & 255], key)

        out[name] = {"seal_us": round(_per_packet_us(seal, n, repeats), 2),
                     "open_us": round(_per_packet_us(open_, n, repeats), 2)}
    t, a = out["blake2s-tag"], out["chacha20-poly1305"]
    out["extra_us_per_packet"] = {"seal": round(a["seal_us"] - t["seal_us"], 2),
                                  "open": round(a["open_us"] - t["open_us"], 2)}
    # per second of stereo audio at 44.1 kHz: 172 AUDIO in, 2 x 172 STEM out per session
    pps = 44100 / 256
    out["extra_cpu_per_session_percent"] = round(
        100 * pps * (out["extra_us_per_packet"]["open"] + 2 * out["extra_us_per_packet"]
                     ["seal"]) / 1e6, 3)
    return out


def render(r: dict) -> str:
    t, a, x = r["blake2s-tag"], r["chacha20-poly1305"], r["extra_us_per_packet"]
    return "\n".join([
        f"command: {r['command']}", f"machine: {r['machine']}",
        f"{r['packet_bytes']}-byte STEM packet (256 frames, stereo s16), us per packet:",
        "| protection | seal (encode + protect) | open (verify/decrypt) |", "|---|---|---|",
        f"| BLAKE2s tag (default) | {t['seal_us']} | {t['open_us']} |",
        f"| ChaCha20-Poly1305 (--encrypt) | {a['seal_us']} | {a['open_us']} |",
        f"| extra for --encrypt | {x['seal']} | {x['open']} |",
        f"extra server CPU per real-time session (172 AUDIO opened + 344 STEM sealed per s): "
        f"{r['extra_cpu_per_session_percent']} % of one core",
    ])
