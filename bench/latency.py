"""`stemlink bench latency`: stemlink vs the blueprint baseline, same audio, same model,
same machine, servers as child processes on loopback, measured on the client's clock.

End-to-end latency of an input block (256 samples) = arrival of the last stem sample that
corresponds to it − the moment the block was sent (for the baseline: the moment the
2048-sample frame carrying its last sample was sent).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink import progress as prog
from stemlink.bench import procs
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.errors import StemlinkError
from stemlink.percentiles import summarize

BLOCK = 256
PNG = "latency_cdf.png"


def bench_audio(seconds: float, path: Path) -> tuple[np.ndarray, int]:
    from stemlink.export.checkpoint import example_audio

    x, sr = aio.read_audio(example_audio())
    n = int(seconds * sr)
    x = aio.loop_to(x, n)
    aio.write_audio(path, x, sr, subtype="PCM_16")
    x, _ = aio.read_audio(path)  # exactly what both clients send
    return x, sr


def run_clients(wav: Path, port: int, preset: str, n: int, jitter_ms: float = 60.0,
                synthesis_hop: int | None = None, mask_hold: int | None = None) -> list:
    """n real-time `send` clients at once against a stemlink server on loopback."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, send_file

    async def go():
        return await asyncio.gather(*[
            send_file(SendOptions(wav, ("127.0.0.1", port), None, preset=preset,
                                  realtime=True, jitter_ms=jitter_ms,
                                  synthesis_hop=synthesis_hop, mask_hold=mask_hold))
            for _ in range(n)])

    return run_loop(go())


def deadline_ms(model: str, preset: str, backend: str, synthesis_hop: int | None = None,
                mask_hold: int | None = None) -> float:
    """One inference period (H*k*m samples) of the configuration the server will build:
    a stem block arriving later than this after its input block left missed its deadline."""
    from stemlink.engine.card import load_card
    from stemlink.engine.presets import preset as preset_config
    from stemlink.engine.presets import with_overrides
    from stemlink.engine.streaming import latency_of

    card = load_card(model)
    cfg = with_overrides(preset_config(preset, accelerated=backend != "cpu"), card.hop,
                         card.window_frames, synthesis_hop=synthesis_hop, mask_hold=mask_hold)
    return latency_of(card, cfg).period_ms


def run_stemlink(model: str, wav: Path, clients: int, preset: str, backend: str,
                 tmp: Path, relay_args: list[str] | None = None,
                 synthesis_hop: int | None = None, mask_hold: int | None = None) -> dict:
    deadline = deadline_ms(model, preset, backend, synthesis_hop, mask_hold)
    port = procs.free_port()
    child = procs.stemlink_server(model, port, preset, backend, tmp / "stemlink.json")
    relay = relay_cmd = None
    try:
        to = port
        if relay_args is not None:  # the clients go through the UDP impairment relay
            relay, to, relay_cmd = procs.stemlink_relay(port, relay_args, tmp / "relay-udp.json")
        reps = run_clients(wav, to, preset, clients, deadline, synthesis_hop, mask_hold)
        cpu = child.cpu_use()
    finally:
        relay_stats = relay.stop() if relay is not None else None
        stats = child.stop()
    lat = [v for r in reps for v in r.block_latency_ms]
    r0 = reps[0]
    secs = max(r.seconds for r in reps)
    comp = np.asarray(stats.get("compute_ns", []), np.float64) / 1e6
    return {
        "latency_ms": summarize(lat), "block_latencies_ms": lat,
        "algorithmic_delay_ms": 1000 * r0.delay / r0.sample_rate,
        "algorithmic_delay_samples": r0.delay, "preset": r0.preset,
        "synthesis_hop": r0.synthesis_hop, "mask_hold": r0.mask_hold,
        "compute_ms": {"unit": f"per 256-sample block (inference every {deadline:.1f} ms)",
                       **summarize(comp)},
        "deadline_ms": deadline,
        "missed_deadlines": int(sum(r.late + r.lost for r in reps)),
        "server_cpu_cores": cpu,
        "bytes_per_s_per_client": {"up": r0.bytes_sent / secs,
                                   "down": r0.bytes_received / secs},
        "lost_blocks": int(sum(r.lost for r in reps)),
        "late_blocks": int(sum(r.late for r in reps)),
        "rtt_ms": r0.rtt_ms, "relay_command": relay_cmd, "relay": relay_stats,
    }


def run_baseline(model: str, x: np.ndarray, sr: int, clients: int, backend: str,
                 tmp: Path, relay_args: list[str] | None = None) -> dict:
    from stemlink.bench import baseline as bl

    port = procs.free_port(procs.socket.SOCK_STREAM)
    child = procs.baseline_server(model, port, backend, tmp / "baseline.json")
    relay = relay_cmd = None
    try:
        to = port
        if relay_args is not None:  # the same link, in the relay's TCP mode
            relay, to, relay_cmd = procs.stemlink_relay(port, relay_args,
                                                        tmp / "relay-tcp.json", tcp=True)
        url = f"ws://127.0.0.1:{to}/ws/separate"

        async def go():
            return await asyncio.gather(*[bl.run_client(url, x, sr) for _ in range(clients)])

        runs = asyncio.run(go())
        cpu = child.cpu_use()
    finally:
        relay_stats = relay.stop() if relay is not None else None
        stats = child.stop()
    window = int(sr * bl.WINDOW_SECONDS)
    lat = [v for r in runs for v in bl.block_latencies(r, x.shape[1], window // 2, BLOCK)]
    secs = x.shape[1] / sr
    comp = np.asarray(stats.get("compute_ns", []), np.float64) / 1e6
    return {
        "latency_ms": summarize(lat), "block_latencies_ms": lat,
        "algorithmic_delay_ms": 1000 * (window - 1) / sr,
        "algorithmic_delay_samples": window - 1,
        "compute_ms": {"unit": "per 1 s window (every 0.5 s)", **summarize(comp)},
        "server_cpu_cores": cpu,
        "bytes_per_s_per_client": {"up": runs[0].bytes_sent / secs,
                                   "down": runs[0].bytes_received / secs},
        "lost_blocks": int(sum(np.isnan(lat))), "late_blocks": None,
        "relay_command": relay_cmd, "relay": relay_stats,
        "deadline_ms": None, "missed_deadlines": None,
    }


def bench_latency(model: str, against: str | None, seconds: float, clients: int,
                  profile: str | None, preset: str, backend: str, out: Path,
                  seed: int = 1, bars: bool = False, synthesis_hop: int | None = None,
                  mask_hold: int | None = None) -> dict:
    from stemlink.bench.relay import PROFILES

    if profile is not None and profile not in PROFILES:
        raise StemlinkError(f"--profile {profile}: unknown (choose from {', '.join(PROFILES)})")
    # with a profile both systems go through `stemlink relay` (UDP, and TCP for the
    # WebSocket baseline) with the same link settings and seed
    relay_args = None if profile is None else ["--profile", profile, "--seed", str(seed)]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        x, sr = bench_audio(seconds, tmp / "bench.wav")
        with prog.timed("stemlink (real time)", seconds, on=bars):
            systems = {"stemlink": run_stemlink(model, tmp / "bench.wav", clients, preset,
                                                backend, tmp, relay_args, synthesis_hop,
                                                mask_hold)}
        if against == "baseline":
            with prog.timed("baseline (real time)", seconds, on=bars):
                systems["baseline"] = run_baseline(model, x, sr, clients, backend, tmp,
                                                   relay_args)
    result = {
        "benchmark": "latency", "command": "stemlink " + " ".join(sys.argv[1:]),
        "machine": machine(), "seconds": seconds, "clients": clients, "preset": preset,
        "backend": backend, "block_samples": BLOCK, "systems": systems,
        "network": ("loopback" if profile is None else
                    f"loopback through stemlink relay, profile {profile}, seed {seed}"),
    }
    if "baseline" in systems:
        result["ratio_stemlink_p99_to_baseline_p50"] = (
            systems["stemlink"]["latency_ms"]["p99"] / systems["baseline"]["latency_ms"]["p50"])
    write_report(out, "results", result, render(result))
    plot(result, out / PNG)
    return result


def render(result: dict) -> str:
    rows = []
    for name, s in result["systems"].items():
        lat, comp = s["latency_ms"], s["compute_ms"]
        bw = s["bytes_per_s_per_client"]
        rows.append([name, f"{s['algorithmic_delay_ms']:.1f}", f"{lat['p50']:.1f}",
                     f"{lat['p95']:.1f}", f"{lat['p99']:.1f}",
                     f"{comp['p50']:.2f} / {comp['p99']:.2f}", comp["unit"],
                     f"{100 * s['server_cpu_cores']:.0f} %",
                     f"{bw['up'] / 1000:.0f} / {bw['down'] / 1000:.0f}", s["lost_blocks"],
                     "n/a" if s.get("missed_deadlines") is None else
                     f"{s['missed_deadlines']} (> {s['deadline_ms']:.1f} ms)"])
    table = markdown_table(
        ["system", "D ms", "e2e p50 ms", "e2e p95 ms", "e2e p99 ms", "compute p50 / p99 ms",
         "compute unit", "server CPU", "kB/s up / down per client", "lost blocks",
         "missed deadlines"], rows)
    head = (f"latency on {result['network']}, {result['clients']} client(s), "
            f"{result['seconds']:g} s of audio each, preset {result['preset']}, backend "
            f"{result['backend']}\nmachine: {describe(result['machine'])}\n"
            f"command: {result['command']}\n\n")
    tail = "".join(f"\n{name} relay: `{s['relay_command']}`"
                   for name, s in result["systems"].items() if s.get("relay_command"))
    if tail:
        tail = "\n" + tail
    if "ratio_stemlink_p99_to_baseline_p50" in result:
        r = result["ratio_stemlink_p99_to_baseline_p50"]
        tail += (f"\n\nstemlink p99 / baseline p50 = {r:.3f} "
                f"(baseline p50 is {1 / r:.1f}x stemlink's p99)")
    return head + table + tail


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, s in result["systems"].items():
        v = np.sort([x for x in s["block_latencies_ms"] if np.isfinite(x)])
        if v.size:
            ax.plot(v, np.arange(1, v.size + 1) / v.size, label=(
                f"{name} (p50 {s['latency_ms']['p50']:.0f} ms, p99 "
                f"{s['latency_ms']['p99']:.0f} ms; D {s['algorithmic_delay_ms']:.0f} ms)"))
            ax.axvline(s["algorithmic_delay_ms"], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency per 256-sample block (ms, log scale)")
    ax.set_ylabel("fraction of blocks")
    ax.set_title(f"stemlink vs blueprint baseline: {result['clients']} client(s), preset "
                 f"{result['preset']}, {result['network']}\n{describe(result['machine'])}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
