"""`stemlink bench gpu`: the one command for every GPU figure of issue 11, into
gpu.json and gpu.md:

1. compute per window by backend and batch size: ONNX Runtime CUDA EP (with and without
   CUDA graph), TensorRT FP32 and FP16 where TensorRT is installed (plans are built
   first with `stemlink export tensorrt` when missing or stale); each timed with whole
   windows copied (infer()) and with the copy plans a streaming separator at H = 1,
   L = 0 allows (newest frame up, one output frame down: infer(new_frames=1));
2. GPU vs CPU output SDR: the same streaming separator (`monitor` at H = 1) on the
   example and a synthetic song, GPU backend against ONNX Runtime CPU FP32; floors
   40 dB (FP32) and 30 dB (FP16);
3. capacity: `stemlink bench capacity` against a server on the best backend (`monitor`,
   H = 1), ramping clients until a deadline is missed.

On a host without a GPU the CLI says so in one line and exits 2 (before this module
loads anything). NOT run yet: no GPU was lent to the task that wrote it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from stemlink.bench import precision as pr
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.engine.backend import OrtBackend, make_backend
from stemlink.engine.card import load_card
from stemlink.engine.copyplan import separator_frames
from stemlink.engine.errors import EngineError
from stemlink.engine.presets import StreamConfig
from stemlink.percentiles import summarize

SDR_FLOOR_DB = {"fp32": 40.0, "fp16": 30.0}
GPU_CONFIG = StreamConfig(1, 0, "standard")  # `monitor` on a GPU


def variants(trt: bool) -> list[tuple[str, str, dict]]:
    """(label, backend kind, keyword arguments) of every GPU variant to measure."""
    out = [("ort-cuda+graph", "cuda", {"cuda_graph": True}),
           ("ort-cuda", "cuda", {"cuda_graph": False})]
    if trt:
        out += [("tensorrt-fp32+graph", "tensorrt", {"precision": "fp32"}),
                ("tensorrt-fp16+graph", "tensorrt", {"precision": "fp16"})]
    return out


def precision_of(label: str) -> str:
    return "fp16" if "fp16" in label else "fp32"


def time_backend(be, iterations: int, new_frames: int | None) -> dict:
    rng = np.random.default_rng(0)
    be.inputs[...] = rng.random(be.inputs.shape, np.float32) * 10
    for _ in range(5):
        be.infer(new_frames=new_frames)
    ms = []
    for _ in range(iterations):
        t = time.perf_counter()
        be.infer(new_frames=new_frames)
        ms.append((time.perf_counter() - t) * 1e3)
    s = summarize(ms, (50, 99))
    s["per_window_p50"] = s["p50"] / be.batch
    return s


def bench_gpu(model: str, batches: list[int], iterations: int, seconds: float,
              max_clients: int, capacity: bool, out: Path) -> dict:
    from stemlink.engine.cudart import cuda

    folder = Path(model)
    card = load_card(folder)
    dev = cuda().device()
    try:
        import tensorrt  # noqa: F401

        have_trt = True
    except ImportError:
        have_trt = False
    notes = [] if have_trt else ["TensorRT is not installed here: TensorRT rows skipped"]
    if have_trt:
        from stemlink.export.tensorrt import export_tensorrt

        for fp16 in (False, True):
            export_tensorrt(folder, fp16=fp16, batches=batches,
                            say=lambda s: print(s, file=sys.stderr))
        card = load_card(folder)
    tail = separator_frames(card.window_frames, GPU_CONFIG.hop_frames, GPU_CONFIG.lookahead)
    compute = []
    for label, kind, kw in variants(have_trt):
        for b in batches:
            for mode, frames, new in (("whole windows", None, None),
                                      ("newest frame / tail", tail, 1)):
                try:
                    be = make_backend(kind, card, folder, batch=b, output_frames=frames, **kw)
                    be.activate()
                except EngineError as e:
                    notes.append(f"{label} batch {b}: {e}")
                    break
                try:
                    compute.append({"backend": label, "batch": b, "copies": mode,
                                    "ms": time_backend(be, iterations, new)})
                finally:
                    be.deactivate()
    # GPU vs CPU output SDR, batch 1, the separator as the server runs it
    songs = pr.audio_set(seconds, card)
    cpu = OrtBackend(card, folder)
    cpu.activate()
    try:
        refs = {k: pr.streamed(card, cpu, x, GPU_CONFIG) for k, x in songs.items()}
    finally:
        cpu.deactivate()
    sdr_rows = []
    for label, kind, kw in variants(have_trt):
        try:
            be = make_backend(kind, card, folder, batch=1, **kw)
            be.activate()
        except EngineError as e:
            notes.append(f"{label} SDR: {e}")
            continue
        try:
            for name, x in songs.items():
                got = pr.stem_sdr(card, refs[name], pr.streamed(card, be, x, GPU_CONFIG))
                floor = SDR_FLOOR_DB[precision_of(label)]
                sdr_rows.append({"backend": label, "audio": name, "sdr_db": got,
                                 "floor_db": floor, "pass": min(got.values()) >= floor})
        finally:
            be.deactivate()
    cap = None
    if capacity:
        from stemlink.bench.capacity import bench_capacity

        kinds = ["cuda"] + (["tensorrt"] if have_trt else [])
        cap = bench_capacity(model, kinds, "monitor", seconds, max_clients, out / "capacity")
    best = min((r for r in compute if r["batch"] == 1), key=lambda r: r["ms"]["p50"],
               default=None)
    result = {"benchmark": "gpu", "command": "stemlink " + " ".join(sys.argv[1:]),
              "machine": machine(), "gpu": {"name": dev.name, "compute_capability": dev.sm,
                                            "cuda_runtime": cuda().runtime_version()},
              "tensorrt": have_trt, "compute": compute, "sdr": sdr_rows, "capacity": cap,
              "best_batch1": best, "notes": notes}
    write_report(out, "gpu", result, render(result))
    return result


def render(r: dict) -> str:
    g = r["gpu"]
    head = (f"GPU: {g['name']} (sm {g['compute_capability']}, CUDA runtime "
            f"{g['cuda_runtime']}); {describe(r['machine'])}\ncommand: {r['command']}\n\n")
    comp = markdown_table(
        ["backend", "batch", "copies", "call p50 ms", "call p99 ms", "per window p50 ms"],
        [[x["backend"], x["batch"], x["copies"], f"{x['ms']['p50']:.3f}",
          f"{x['ms']['p99']:.3f}", f"{x['ms']['per_window_p50']:.4f}"] for x in r["compute"]])
    sdr = markdown_table(
        ["backend", "audio", "SDR vs CPU FP32 (dB)", "floor dB", "pass"],
        [[x["backend"], x["audio"], " / ".join(f"{k} {v:.1f}" for k, v in x["sdr_db"].items()),
          f"{x['floor_db']:g}", "yes" if x["pass"] else "NO"] for x in r["sdr"]])
    text = head + "compute per window\n\n" + comp + "\n\nGPU vs CPU output SDR\n\n" + sdr
    if r["capacity"]:
        from stemlink.bench.capacity import render as cap_render

        text += "\n\n" + cap_render(r["capacity"])
    if r["notes"]:
        text += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in r["notes"])
    return text
