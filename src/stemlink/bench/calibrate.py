"""`stemlink bench relay`: what the relay's profiles actually do, measured on its sans-IO
cores (no sockets, no clock: the figures depend only on the seed and the traffic).

UDP: stemlink's traffic pattern (one datagram per 256 samples at 44.1 kHz, 5.8 ms apart)
through each profile: loss rate, mean loss-burst length, added delay percentiles, swaps
and duplicates. TCP: the WebSocket baseline's upload pattern (8 KiB every 46.4 ms,
2048 s16 stereo frames) through the same profile in the relay's TCP mode, under both
recovery models: the delay each byte gains from retransmissions and head-of-line blocking.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from stemlink.bench.machine import machine
from stemlink.bench.relay import (
    PROFILES,
    TCP_RECOVERY,
    Impairment,
    StreamImpairment,
    ge_mean_burst,
)
from stemlink.bench.stats import markdown_table

UDP_INTERVAL_S = 256 / 44100
TCP_CHUNK = 2048 * 2 * 2
TCP_INTERVAL_S = 2048 / 44100


def _udp(profile: str, n: int, seed: int) -> dict:
    spec = PROFILES[profile]
    imp = Impairment(spec, seed, "down")
    out = []
    for i in range(n):
        now = i * UDP_INTERVAL_S
        out += imp.poll(now)
        out += imp.feed(i.to_bytes(4, "big"), now)
    out += imp.poll(n * UDP_INTERVAL_S + 1.0)
    st = imp.stats
    d = np.array([1000 * (r.time - r.arrival) for r in out])
    return {"profile": profile, "datagrams": n, "configured": spec.describe(),
            "loss_rate": st.loss_rate, "mean_burst": st.mean_burst,
            "configured_mean_burst": ge_mean_burst(spec.loss, spec.burst),
            "reordered_rate": st.reordered / n, "duplicated_rate": st.duplicated / n,
            "delay_ms": {"p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
                         "max": float(d.max()), "mean": float(d.mean())}}


def _tcp(profile: str, seconds: float, seed: int, recovery: str) -> dict:
    imp = StreamImpairment(PROFILES[profile], seed, "up", recovery=recovery)
    chunks = int(seconds / TCP_INTERVAL_S)
    out = []
    for i in range(chunks):
        now = i * TCP_INTERVAL_S
        out += imp.poll(now)
        out += imp.feed(bytes(TCP_CHUNK), now)
    t = chunks * TCP_INTERVAL_S
    while (dl := imp.deadline()) is not None:
        t = max(t, dl)
        out += imp.poll(t)
    d = np.array([1000 * (r.time - r.arrival) for r in out])
    return {"profile": profile, "recovery": recovery, "segments": imp.stats.received,
            "segment_loss_rate": imp.stats.loss_rate, "retransmissions": imp.retransmissions,
            "delay_ms": {"p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
                         "max": float(d.max()), "mean": float(d.mean())}}


def bench_relay(datagrams: int, seed: int) -> dict:
    seconds = datagrams * UDP_INTERVAL_S
    return {"benchmark": "relay", "command": "stemlink " + " ".join(sys.argv[1:]),
            "machine": machine(), "seed": seed,
            "udp": [_udp(p, datagrams, seed) for p in PROFILES],
            "tcp": [_tcp(p, seconds, seed, rec) for p in PROFILES for rec in TCP_RECOVERY]}


def render(r: dict) -> str:
    udp = markdown_table(
        ["profile", "configured", "datagrams", "loss", "mean burst (configured)",
         "added delay p50 / p99 / max ms", "swapped", "duplicated"],
        [[u["profile"], u["configured"], u["datagrams"], f"{100 * u['loss_rate']:.2f} %",
          f"{u['mean_burst']:.2f} ({u['configured_mean_burst']:.2f})",
          f"{u['delay_ms']['p50']:.3f} / {u['delay_ms']['p99']:.3f} / "
          f"{u['delay_ms']['max']:.3f}",
          f"{100 * u['reordered_rate']:.2f} %", f"{100 * u['duplicated_rate']:.2f} %"]
         for u in r["udp"]])
    tcp = markdown_table(
        ["profile", "recovery", "segments", "segment loss", "retransmissions",
         "added delay p50 / p99 / max ms", "mean ms"],
        [[t["profile"], t["recovery"], t["segments"], f"{100 * t['segment_loss_rate']:.2f} %",
          t["retransmissions"],
          f"{t['delay_ms']['p50']:.2f} / {t['delay_ms']['p99']:.1f} / {t['delay_ms']['max']:.1f}",
          f"{t['delay_ms']['mean']:.2f}"] for t in r["tcp"]])
    return (f"relay calibration (sans-IO, seed {r['seed']})\ncommand: {r['command']}\n\n"
            f"UDP, one datagram every {1000 * UDP_INTERVAL_S:.2f} ms (stemlink's blocks):\n\n"
            f"{udp}\n\nTCP mode, {TCP_CHUNK} bytes every {1000 * TCP_INTERVAL_S:.1f} ms "
            f"(the baseline's upload):\n\n{tcp}")


def save(r: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(r, indent=2) + "\n")
