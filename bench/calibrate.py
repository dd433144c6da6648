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
    passed = np.zeros(n, bool)
    passed[[int.from_bytes(r.data, "big") for r in out]] = True
    edges = np.diff(np.concatenate([[0], (~passed).astype(np.int8), [0]]))
    bursts = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return {"profile": profile, "datagrams": n, "configured": spec.describe(),
            "burst_histogram": np.bincount(bursts, minlength=2)[1:].tolist(),
            "delay_ccdf_ms": _ccdf(d),
            "loss_rate": st.loss_rate, "mean_burst": st.mean_burst,
            "configured_mean_burst": ge_mean_burst(spec.loss, spec.burst),
            "reordered_rate": st.reordered / n, "duplicated_rate": st.duplicated / n,
            "delay_ms": {"p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
                         "max": float(d.max()), "mean": float(d.mean())}}


def _ccdf(d: np.ndarray, points: int = 200) -> list[list[float]]:
    """[(delay ms, fraction of packets delayed more)] at log-spaced fractions."""
    d = np.sort(d)
    frac = np.geomspace(1.0 / d.size, 1.0, points)
    return [[float(np.quantile(d, 1 - f)), float(f)] for f in frac]


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
            "delay_ccdf_ms": _ccdf(d),
            "segment_loss_rate": imp.stats.loss_rate, "retransmissions": imp.retransmissions,
            "delay_ms": {"p50": float(np.percentile(d, 50)), "p99": float(np.percentile(d, 99)),
                         "max": float(d.max()), "mean": float(d.mean())}}


def bench_relay(datagrams: int, seed: int, progress=None) -> dict:
    seconds = datagrams * UDP_INTERVAL_S
    steps = len(PROFILES) * (1 + len(TCP_RECOVERY))
    udp, tcp = [], []
    if progress:
        progress(0, steps)
    for p in PROFILES:
        udp.append(_udp(p, datagrams, seed))
        if progress:
            progress(len(udp) + len(tcp), steps)
    for p in PROFILES:
        for rec in TCP_RECOVERY:
            tcp.append(_tcp(p, seconds, seed, rec))
            if progress:
                progress(len(udp) + len(tcp), steps)
    return {"benchmark": "relay", "command": "stemlink " + " ".join(sys.argv[1:]),
            "machine": machine(), "seed": seed, "udp": udp, "tcp": tcp}


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


PNG = "relay.png"


def save(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "relay.json").write_text(json.dumps(r) + "\n")
    (out / "relay.md").write_text(render(r) + "\n")
    plot(r, out / PNG)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4.2), dpi=110)
    for u in r["udp"]:
        c = np.array(u["delay_ccdf_ms"])
        a1.plot(c[:, 0], c[:, 1], label=u["profile"])
        h = np.array(u["burst_histogram"], float)
        if h.sum():
            a2.plot(np.arange(1, h.size + 1), h / h.sum(), "o-", ms=3,
                    label=f"{u['profile']} (mean {u['mean_burst']:.2f})")
    for t in r["tcp"]:
        c = np.array(t["delay_ccdf_ms"])
        if t["profile"] != "wired":
            a3.plot(np.maximum(c[:, 0], 1e-3), c[:, 1], ls="-" if t["recovery"] == "linux"
                    else "--", label=f"{t['profile']}, {t['recovery']}")
    a1.set(xlabel="added delay (ms)", ylabel="fraction of datagrams delayed more",
           yscale="log", title="UDP: added delay (jitter, reorder holds)")
    a2.set(xlabel="loss burst length (datagrams)", ylabel="fraction of bursts", yscale="log",
           title="UDP: Gilbert–Elliott loss bursts")
    a3.set(xlabel="added delay (ms, log)", ylabel="fraction of segments delayed more",
           xscale="log", yscale="log", title="TCP mode: retransmission + head-of-line delay")
    for a in (a1, a2, a3):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"stemlink relay profiles, seed {r['seed']} (sans-IO cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
