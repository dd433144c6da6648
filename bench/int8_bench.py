"""`stemlink bench int8`: is static int8 (QDQ) worth keeping on this CPU? And the
OpenVINO execution provider, where the CPU is Intel.

Kept as a backend option only if >= KEEP_SPEEDUP x faster per window at <= KEEP_COST_DB
fidelity cost (issue 11, item 5). Fidelity cost: SDR of the streamed FP32 model against
the offline FP32 model minus the same for the variant, per stem, on the bundled example
and a song of our own making (`monitor` on a CPU: H = 2, L = 0). The int8 graph is built
in a temporary folder (models are built at set-up, never committed)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from stemlink.bench import precision as pr
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.engine.backend import OrtBackend
from stemlink.engine.card import load_card
from stemlink.engine.offline import separate_offline

KEEP_SPEEDUP = 1.5
KEEP_COST_DB = 0.3


def cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def openvino_note() -> str:
    import onnxruntime as ort

    vendor = cpu_vendor()
    if vendor != "GenuineIntel":
        return (f"not tried: this CPU is {vendor} ({machine()['cpu']}); the OpenVINO "
                f"execution provider targets Intel CPUs")
    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        return "not tried: Intel CPU, but onnxruntime here has no OpenVINOExecutionProvider"
    return "available but not measured by this command yet"


def bench_int8(model: str, seconds: float, iterations: int, method: str) -> dict:
    from stemlink.export.int8 import INT8_FILE, quantize_int8

    folder = Path(model)
    card = load_card(folder)
    songs = pr.audio_set(seconds, card)
    off = OrtBackend(card, folder, graph="offline")
    off.activate()
    try:
        refs = {k: separate_offline(card, off, x) for k, x in songs.items()}
    finally:
        off.deactivate()
    fp32 = OrtBackend(card, folder)
    fp32.activate()
    with tempfile.TemporaryDirectory() as td:
        try:
            windows = pr.calibration_windows(card, fp32, list(songs.values()))
            info = quantize_int8(folder / card.streaming.file, Path(td) / INT8_FILE,
                                 windows, method)
            q = OrtBackend(card, td, onnx_file=INT8_FILE)
            q.activate()
            try:
                ms = pr.compute_ms({"fp32": fp32, "int8": q}, iterations)
                rows = []
                for name, x in songs.items():
                    a, b = pr.streamed(card, fp32, x), pr.streamed(card, q, x)
                    fa, fb = pr.stem_sdr(card, refs[name], a), pr.stem_sdr(card, refs[name], b)
                    rows.append({"audio": name, "fp32_vs_offline": fa, "int8_vs_offline": fb,
                                 "int8_vs_fp32": pr.stem_sdr(card, a, b),
                                 "cost_db": {s: round(fa[s] - fb[s], 2) for s in card.stems}})
            finally:
                q.deactivate()
        finally:
            fp32.deactivate()
    speedup = ms["fp32"]["p50"] / ms["int8"]["p50"]
    worst = max(c for r in rows for c in r["cost_db"].values())
    keep = speedup >= KEEP_SPEEDUP and worst <= KEEP_COST_DB
    return {"benchmark": "int8", "command": "stemlink " + " ".join(sys.argv[1:]),
            "machine": machine(), "cpu_vendor": cpu_vendor(), "quantization": info,
            "compute_ms": ms, "speedup_p50": round(speedup, 3), "fidelity": rows,
            "worst_cost_db": worst, "keep": keep, "openvino": openvino_note(),
            "rule": f"keep if >= {KEEP_SPEEDUP}x faster at <= {KEEP_COST_DB} dB cost"}


def render(r: dict) -> str:
    ms = r["compute_ms"]
    rows = []
    for f in r["fidelity"]:
        for s in f["cost_db"]:
            rows.append([f["audio"], s, f"{f['fp32_vs_offline'][s]:.2f}",
                         f"{f['int8_vs_offline'][s]:.2f}", f"{f['cost_db'][s]:.2f}",
                         f"{f['int8_vs_fp32'][s]:.2f}"])
    q = r["quantization"]
    return (f"static int8 (QDQ, {q['method']} calibration on {q['calibration_windows']} "
            f"windows; {', '.join(q['quantized_ops'])} quantised, mask-ratio head FP32), "
            f"{describe(r['machine'])}\ncommand: {r['command']}\n\n"
            f"compute per window (model only): FP32 p50 {ms['fp32']['p50']:.2f} ms / p99 "
            f"{ms['fp32']['p99']:.2f} ms; int8 p50 {ms['int8']['p50']:.2f} ms / p99 "
            f"{ms['int8']['p99']:.2f} ms; speed-up {r['speedup_p50']:.2f}x\n\n" +
            markdown_table(["audio", "stem", "FP32 SDR vs offline", "int8 SDR vs offline",
                            "cost dB", "int8 vs FP32 SDR"], rows) +
            f"\n\n{r['rule']}: {'KEEP' if r['keep'] else 'DROP'} "
            f"(speed-up {r['speedup_p50']:.2f}x, worst cost {r['worst_cost_db']:.2f} dB)\n"
            f"OpenVINO EP: {r['openvino']}")


def save(r: dict, out: Path) -> None:
    write_report(out, "int8", r, render(r))
