"""`stemlink bench capacity`: how many concurrent real-time sessions one server sustains
with zero missed deadlines, per available backend, ramping the number of clients up.

A stem block misses its deadline when it arrives more than one inference period (H*k*m samples)
after the capture of the input block it answers, or never arrives.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from stemlink.bench import procs
from stemlink.bench.latency import bench_audio, run_clients
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report


def available_backends() -> list[str]:
    import onnxruntime as ort

    out = ["cpu"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        out.append("cuda")
    return out


def bench_capacity(model: str, backends: list[str], preset: str, seconds: float,
                   max_clients: int, out: Path, synthesis_hop: int | None = None,
                   mask_hold: int | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   workers: tuple[int, ...] = (1,), batch: int | None = None,
                   batch_delay_us: float | None = None,
                   counts: list[int] | None = None) -> dict:
    """Each backend x worker count is one server (`serve --workers W [--batch B]
    [--batch-delay-us U]`), ramped from 1 client up to the first step that misses; or,
    with `counts`, run at each of those client counts whatever the misses (every step
    is reported; the capacity is the largest count below the first step that missed)."""
    from stemlink.bench.latency import deadline_ms
    from stemlink.engine import families
    from stemlink.engine.card import load_card

    card = load_card(model)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    runs = [(b, w) for b in backends for w in workers]
    if progress:
        progress(0, len(runs) * max_clients)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bench_audio(seconds, tmp / "bench.wav")
        for run_i, (backend, n_workers) in enumerate(runs):
            extra = ["--workers", str(n_workers)]
            if batch is not None:
                extra += ["--batch", str(batch)]
            if batch_delay_us is not None:
                extra += ["--batch-delay-us", f"{batch_delay_us:g}"]
            label = f"{backend} x{n_workers}"
            cfg = families.preset(card, preset, accelerated=backend != "cpu")
            if families.is_segment(card):  # one inference per stride
                per_run = getattr(families.latency(card, cfg), "stride",
                                  cfg.hop_frames * card.hop)
                budget_ms = 1000.0 * per_run / card.sample_rate
            else:
                budget_ms = deadline_ms(model, preset, backend, synthesis_hop, mask_hold)
            port = procs.free_port()
            child = procs.stemlink_server(model, port, preset, backend,
                                          tmp / f"{backend}-{n_workers}.json",
                                          max_sessions=max_clients, extra=extra)
            steps = []
            try:
                for n in counts or range(1, max_clients + 1):
                    cpu0 = procs.cpu_seconds(child.proc.pid)
                    reps = run_clients(tmp / "bench.wav", port, preset, n, budget_ms,
                                       synthesis_hop, mask_hold)
                    secs = max(r.seconds for r in reps)
                    missed = sum(r.late + r.lost for r in reps)
                    steps.append({
                        "clients": n, "missed": int(missed),
                        "late": int(sum(r.late for r in reps)),
                        "lost": int(sum(r.lost for r in reps)),
                        # media seconds of the misses, per client (where they fell)
                        "late_at_s": [r.late_at_s for r in reps],
                        "lost_at_s": [r.lost_at_s for r in reps],
                        "blocks": int(sum(r.expected for r in reps)),
                        "turnaround_p99_ms": max(r.turnaround_ms.get("p99", float("nan"))
                                                 for r in reps),
                        "latency_p99_ms": max(r.latency_ms.get("p99", float("nan"))
                                              for r in reps),
                        "server_cpu_cores": (procs.cpu_seconds(child.proc.pid) - cpu0) / secs,
                    })
                    if progress:  # steps of the ramp, all runs; it may stop early
                        progress((run_i + 1) * max_clients if missed
                                 else run_i * max_clients + n, len(runs) * max_clients)
                    if missed and not counts:
                        break
            finally:
                child.stop()
            ok = []
            for st in steps:  # below the first step that missed
                if st["missed"]:
                    break
                ok.append(st["clients"])
            results[label] = {"backend": backend, "workers": n_workers,
                              "server_flags": " ".join(extra),
                              "preset": preset, "H": cfg.hop_frames, "budget_ms": budget_ms,
                                "capacity": max(ok) if ok else 0, "steps": steps,
                                "limited_by_max_clients": bool(ok) and
                                max(ok) == max_clients}
    result = {"benchmark": "capacity", "command": "stemlink " + " ".join(sys.argv[1:]),
              "machine": machine(), "seconds": seconds, "backends": results}
    write_report(out, "capacity", result, render(result))
    return result


def render(result: dict) -> str:
    rows = []
    for label, r in result["backends"].items():
        for s in r["steps"]:
            rows.append([r.get("backend", label), r.get("server_flags", ""), r["preset"],
                         s["clients"], s["missed"], s["blocks"],
                         f"{s['turnaround_p99_ms']:.1f}", f"{r['budget_ms']:.1f}",
                         f"{s['latency_p99_ms']:.1f}", f"{100 * s['server_cpu_cores']:.0f} %"])
    summary = "; ".join(
        f"{b}: {r['capacity']}{'+' if r['limited_by_max_clients'] else ''} session(s)"
        for b, r in result["backends"].items())
    return (f"capacity ({result['seconds']:g} s per step), {describe(result['machine'])}\n"
            f"command: {result['command']}\n\n" + markdown_table(
                ["backend", "serve flags", "preset", "clients", "missed", "stem blocks",
                 "turnaround p99 ms",
                 "deadline ms", "e2e p99 ms", "server CPU"], rows) +
            f"\n\ncapacity with zero missed deadlines: {summary}")
