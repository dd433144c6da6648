"""TensorRT plans in the model card: naming, profile choice and staleness (pure, no
TensorRT needed, unit-tested).

A plan is valid only for the TensorRT version that built it and the GPU it was built on
(TensorRT's tactics are chosen per GPU model; a plan refuses to load on another compute
capability). So each entry of the card's `engines` list records what it was built from
and for, and a plan that does not match this host is stale: `stemlink export tensorrt`
rebuilds it, the tensorrt backend refuses it in one line that says so.

Entry (JSON, in model.json's "engines"):
  {"file": "engines/<slug>.plan", "plan_sha256": ..., "graph": "streaming",
   "precision": "fp32" | "fp16", "onnx": "model.onnx", "onnx_sha256": ...,
   "profiles": [1, 8, 32],          # batch size of optimisation profile i (min=opt=max)
   "tensorrt": "10.8.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
   "built": "2026-11-25T21:00:00Z"}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemlink.engine.card import sha256
from stemlink.engine.errors import EngineError

PRECISIONS = ("fp32", "fp16")
MAX_BATCH = 1024
DEFAULT_BATCHES = (1, 8, 32)
ENGINE_DIR = "engines"
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class HostFacts:
    """What this host would build or run a plan with."""

    tensorrt: str
    gpu: str
    compute_capability: str  # "9.0"


def parse_batches(text: str) -> list[int]:
    """"1,8,32" -> [1, 8, 32]: sorted, distinct, each 1..MAX_BATCH; one line otherwise."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EngineError(f"--batch takes sizes like 1,8,32, not {text!r}") from None
    if not values:
        raise EngineError("--batch needs at least one batch size")
    bad = [v for v in values if not 1 <= v <= MAX_BATCH]
    if bad:
        raise EngineError(f"batch sizes must be within 1..{MAX_BATCH}, not {bad[0]}")
    return sorted(set(values))


def choose_profile(profiles: list[int], batch: int) -> int:
    """Index of the optimisation profile to run `batch` windows with: the exact size if
    built, else the smallest larger one (the extra slots are computed and ignored)."""
    fits = [(b, i) for i, b in enumerate(profiles) if b >= batch]
    if not fits:
        built = ", ".join(map(str, profiles)) or "none"
        raise EngineError(f"no TensorRT profile holds batch {batch} (built: {built}); "
                          f"rebuild with `stemlink export tensorrt --batch ...,{batch}`")
    return min(fits)[1]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def plan_file(graph_file: str, precision: str, host: HostFacts) -> str:
    """engines/model-fp16-nvidia-h100-80gb-hbm3-sm90-trt10.8.0.plan"""
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}")
    stem = Path(graph_file).stem
    cc = host.compute_capability.replace(".", "")
    return f"{ENGINE_DIR}/{stem}-{precision}-{slug(host.gpu)}-sm{cc}-trt{host.tensorrt}.plan"


def fp16_onnx_name(graph_file: str) -> str:
    """The FP16 (mixed) ONNX next to the FP32 one: model.onnx -> model-fp16.onnx."""
    p = Path(graph_file)
    return f"{p.stem}-fp16{p.suffix}"


def plan_problem(entry: dict[str, Any], host: HostFacts, folder: Path) -> str | None:
    """None if the plan can run here; else one line: what differs and what to run."""
    fix = f"rebuild it: stemlink export tensorrt --model {folder}"
    if entry.get("precision") == "fp16":
        fix += " --fp16"
    name = entry.get("file", "?")
    for key in ("file", "tensorrt", "gpu", "compute_capability", "onnx", "profiles"):
        if key not in entry:
            return f"engine entry {name} lacks {key!r}; {fix}"
    if entry["tensorrt"] != host.tensorrt:
        return (f"{name} was built with TensorRT {entry['tensorrt']}, this host has "
                f"{host.tensorrt}; {fix}")
    if entry["compute_capability"] != host.compute_capability or entry["gpu"] != host.gpu:
        return (f"{name} was built for {entry['gpu']} (sm {entry['compute_capability']}), "
                f"this host has {host.gpu} (sm {host.compute_capability}); {fix}")
    plan = folder / entry["file"]
    if not plan.is_file():
        return f"{plan} is missing; {fix}"
    onnx_path = folder / entry["onnx"]
    if not onnx_path.is_file():
        return f"{onnx_path}, which {name} was built from, is missing; {fix}"
    if entry.get("onnx_sha256") and sha256(onnx_path) != entry["onnx_sha256"]:
        return f"{onnx_path} changed since {name} was built; {fix}"
    if entry.get("plan_sha256") and sha256(plan) != entry["plan_sha256"]:
        return f"{plan} does not match its recorded checksum (corrupt or replaced); {fix}"
    return None


def find_plan(engines: list[dict[str, Any]], precision: str, graph: str, host: HostFacts,
              folder: Path) -> dict[str, Any]:
    """The card's usable entry for this precision and graph on this host, or EngineError
    with the one-line reason (the newest matching entry's problem)."""
    candidates = [e for e in engines
                  if e.get("precision") == precision and e.get("graph", "streaming") == graph]
    if not candidates:
        flag = " --fp16" if precision == "fp16" else ""
        raise EngineError(f"no {precision} TensorRT engine for the {graph} graph in {folder}; "
                          f"build one: stemlink export tensorrt --model {folder}{flag}")
    problems = []
    for e in reversed(candidates):  # newest first
        p = plan_problem(e, host, folder)
        if p is None:
            return e
        problems.append(p)
    raise EngineError(problems[0])


def replace_entry(engines: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's engines with `new` in place of any entry for the same file."""
    return [e for e in engines if e.get("file") != new["file"]] + [new]
