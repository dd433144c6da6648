"""`stemlink bench engine`: compute latency per inference window and real-time factor per
preset, with the real model on real audio, on this machine.

The budget of an inference is its period, the audio between two inferences: H model hops
(batching) or k synthesis hops of m samples (mask hold), i.e. H*k*m samples. Audio is
streamed in blocks of one synthesis hop, so each timed call holds at most one inference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from stemlink import audio as aio
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table
from stemlink.engine import families
from stemlink.engine.families import synthesis_label
from stemlink.engine.session import open_engine
from stemlink.percentiles import summarize


def bench_engine(model: str, backend: str, seconds: float, audio_path: str | None,
                 iterations: int, presets: list[str] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 synthesis_hop: int | None = None, mask_hold: int | None = None) -> dict:
    from stemlink.export.checkpoint import example_audio

    x, sr = aio.read_audio(audio_path or example_audio())
    engine = open_engine(model, backend)
    try:
        card = engine.card
        x = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
        x = aio.loop_to(x, int(seconds * card.sample_rate))
        hops = len(range(0, x.shape[1] - card.hop + 1, card.hop))
        names = families.presets_for(card)
        steps, done = iterations + len(names) * hops, 0  # for the progress bar
        if progress:
            progress(0, steps)
        infer_ms = []
        for _ in range(iterations):
            t = time.perf_counter()
            engine.backend.infer()
            infer_ms.append((time.perf_counter() - t) * 1e3)
        delays = {name: engine.latency(engine.config(name)).samples for name in names}
        done = iterations
        if progress:
            progress(done, steps)
        rows = []
        configs = [(name, engine.config(name)) for name in presets or names]
        if synthesis_hop is not None or mask_hold is not None:
            configs.append(("custom", engine.config("ultra", synthesis_hop=synthesis_hop,
                                                    mask_hold=mask_hold)))
        for name, cfg in configs:
            sep = engine.separator(cfg)
            hop = cfg.hop(card.hop) if hasattr(cfg, "hop") else card.hop  # m (segments: hop)
            window_ms, total = [], 0.0
            for i in range(0, x.shape[1] - hop + 1, hop):
                before = sep.stats.inferences
                t = time.perf_counter()
                sep.process(x[:, i:i + hop])
                dt = time.perf_counter() - t
                total += dt
                if sep.stats.inferences > before:
                    window_ms.append(dt * 1e3)
            done += hops
            if progress:  # between presets, never inside the timed loop
                progress(done, steps)
            audio_s = x.shape[1] / card.sample_rate
            # one inference per period (H*k*m, frame families) or per stride (segments)
            per_run = getattr(sep.latency, "stride", None)
            budget_ms = (1e3 * per_run / card.sample_rate if per_run is not None
                         else sep.latency.period_ms)
            p = summarize(window_ms, (50, 99))
            rtf = total / audio_s
            rows.append({
                "preset": name, "H": cfg.hop_frames, "L": cfg.lookahead,
                "synthesis": synthesis_label(cfg), "m": getattr(cfg, "synthesis_hop", None)
                or hop, "k": getattr(cfg, "mask_hold", 1),
                "delay_samples": sep.delay, "delay_ms": sep.latency.ms, "window_ms": p,
                "budget_ms": budget_ms, "rtf": rtf,
                "realtime": bool(p["p99"] < budget_ms and rtf < 1.0),
            })
    finally:
        engine.close()
    return {
        "benchmark": "engine", "backend": engine.backend.name, "model": card.name,
        "representation": card.representation, "segment": card.segment,
        "window_frames": card.window_frames, "audio_seconds": x.shape[1] / card.sample_rate,
        "inference_ms": summarize(infer_ms, (50, 99)), "presets": rows, "machine": machine(),
        "delay_samples_per_preset": delays, "sample_rate": card.sample_rate,
    }


def render(result: dict) -> str:
    inf = result["inference_ms"]
    head = (f"engine: {result['model']} W={result['window_frames']} on {result['backend']}; "
            f"{describe(result['machine'])}\n"
            f"command: {result.get('command', '')}\n"
            f"one inference (model only): p50 {inf['p50']:.2f} ms, p99 {inf['p99']:.2f} ms\n")
    if "delay_samples_per_preset" in result:  # exact, from the card (streamed or not)
        sr = result["sample_rate"]
        head += "D per preset: " + ", ".join(
            f"{k} {d} samples ({1000 * d / sr:.1f} ms)"
            for k, d in result["delay_samples_per_preset"].items()) + "\n"
    rows = [[r["preset"], r["H"], r["L"], r["synthesis"], r["m"], r["k"],
             f"{r['delay_ms']:.1f}",
             f"{r['window_ms']['p50']:.2f}", f"{r['window_ms']['p99']:.2f}",
             f"{r['budget_ms']:.1f}", f"{r['rtf']:.3f}", "yes" if r["realtime"] else "NO"]
            for r in result["presets"]]
    return head + markdown_table(
        ["preset", "H", "L", "synthesis", "m", "k", "D ms", "window p50 ms", "window p99 ms",
         "budget ms (H*k*m)", "RTF", "real time"], rows)


def save(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
