"""`stemlink export tensorrt`: build a TensorRT plan for this host's GPU from the model
folder's streaming ONNX graph, record it in the card, keep a timing cache.

Native TensorRT 10/11 Python API, as NVIDIA's samples do: Builder, a network from the
ONNX parser (strongly typed where the flag exists; TensorRT 11 knows no other kind), one
optimisation profile per batch size (min = opt = max, so each is a fixed-shape engine
inside one plan), the timing cache file loaded before and saved after the build (later
builds skip tactic timing), `build_serialized_network`. FP16 comes from the mixed ONNX
(export/fp16.py) whose fidelity is checked on the CPU with ONNX Runtime before TensorRT
sees it; TF32 is switched off for FP32 plans so that FP32 means FP32.

Idempotent: a plan that is current for this host (trt_plan.plan_problem is None) is kept,
so the container's entrypoint can call it on every start; `force` rebuilds.

NOT run in this repository's history (no TensorRT on the development machines, no GPU
lent to the task that wrote it). What is tested without TensorRT: batch parsing, plan
naming and staleness, the FP16 ONNX and its fidelity, the messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from stemlink.engine import trt_plan
from stemlink.engine.card import CARD_FILE, load_card, sha256
from stemlink.engine.errors import EngineError
from stemlink.export.errors import ExportError

FP16_MIN_SDR_DB = 30.0  # FP16 graph vs FP32 graph, streamed on the CPU (issue 11 floor)
FP16_CHECK_SECONDS = 6.0
WORKSPACE_MB = 2048
SILENT: Callable[[str], None] = lambda s: None  # noqa: E731


def ensure_fp16_onnx(folder: Path, say: Callable[[str], None] = SILENT) -> tuple[str, dict]:
    """Write (or reuse) the mixed FP16 graph next to the FP32 one and check it against
    FP32 with ONNX Runtime on the CPU: streamed output SDR >= FP16_MIN_SDR_DB on the
    example and a synthetic song, else ExportError."""
    from stemlink.bench import precision as pr
    from stemlink.engine.backend import OrtBackend
    from stemlink.export.fp16 import convert_fp16

    card = load_card(folder)
    name = trt_plan.fp16_onnx_name(card.streaming.file)
    src, dst = folder / card.streaming.file, folder / name
    if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
        say(f"writing {dst} (mixed precision: U-Nets FP16, input, output, mask ratio FP32)")
        info = convert_fp16(src, dst)
    else:
        info = {"converter": "stemlink.export.fp16", "reused": True}
    fp32, fp16 = OrtBackend(card, folder), OrtBackend(card, folder, onnx_file=name)
    fp32.activate()
    fp16.activate()
    try:
        sdrs = {}
        for audio, x in pr.audio_set(FP16_CHECK_SECONDS, card).items():
            sdrs[audio] = pr.stem_sdr(card, pr.streamed(card, fp32, x),
                                      pr.streamed(card, fp16, x))
    finally:
        fp16.deactivate()
        fp32.deactivate()
    worst = min(v for s in sdrs.values() for v in s.values())
    if worst < FP16_MIN_SDR_DB:
        raise ExportError(f"{dst}: FP16 output is {worst:.1f} dB SDR from FP32 on the CPU "
                          f"(floor {FP16_MIN_SDR_DB:g} dB); not building an FP16 engine")
    say(f"FP16 graph vs FP32 on the CPU (ONNX Runtime): worst stem SDR {worst:.1f} dB")
    info["cpu_sdr_vs_fp32_db"] = sdrs
    return name, info


def build_plan(onnx_path: Path, plan_path: Path, cache_path: Path, input_shape: tuple,
               batches: list[int], precision: str, workspace_mb: int) -> None:
    from stemlink.engine.trt_backend import import_tensorrt

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser refused {onnx_path}: {errs[:300]}")
    if network.num_inputs != 1:
        raise ExportError(f"{onnx_path}: expected one input, TensorRT sees {network.num_inputs}")
    name = network.get_input(0).name
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for b in batches:
        profile = builder.create_optimization_profile()
        shape = (b, *input_shape[1:])
        profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))


def export_tensorrt(model: str | Path, *, fp16: bool, batches: list[int],
                    workspace_mb: int = WORKSPACE_MB, force: bool = False,
                    say: Callable[[str], None] = SILENT) -> dict:
    from stemlink.engine.trt_backend import host_facts

    folder = Path(model)
    card = load_card(folder)
    host = host_facts()
    precision = "fp16" if fp16 else "fp32"
    rel = trt_plan.plan_file(card.streaming.file, precision, host)
    current = [e for e in card.engines if e.get("file") == rel]
    if current and not force and sorted(current[-1].get("profiles", [])) == batches and \
            trt_plan.plan_problem(current[-1], host, folder) is None:
        say(f"{rel} is current for {host.gpu} and TensorRT {host.tensorrt}; kept")
        return current[-1]
    onnx_name, fp16_info = (ensure_fp16_onnx(folder, say) if fp16
                            else (card.streaming.file, {}))
    say(f"building {rel}: {precision}, batch profiles {batches}, on {host.gpu} "
        f"(sm {host.compute_capability}), TensorRT {host.tensorrt}")
    t = time.monotonic()
    shape = (1, card.channels, card.window_frames, card.bins)
    try:
        build_plan(folder / onnx_name, folder / rel, folder / trt_plan.ENGINE_DIR /
                   trt_plan.TIMING_CACHE, shape, batches, precision, workspace_mb)
    except EngineError as e:
        raise ExportError(str(e)) from None
    entry = {
        "file": rel, "plan_sha256": sha256(folder / rel), "graph": "streaming",
        "precision": precision, "onnx": onnx_name,
        "onnx_sha256": sha256(folder / onnx_name), "profiles": batches,
        "tensorrt": host.tensorrt, "gpu": host.gpu,
        "compute_capability": host.compute_capability,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t, 1),
    }
    if fp16_info:
        entry["fp16"] = {k: v for k, v in fp16_info.items() if k != "fp32_nodes"}
    write_engine_entry(folder, entry)
    say(f"wrote {folder / rel} ({entry['build_seconds']} s) and its entry in {CARD_FILE}")
    return entry


def write_engine_entry(folder: Path, entry: dict) -> None:
    """Add or replace one entry of the card's `engines`, leaving every other field as is."""
    path = folder / CARD_FILE
    data = json.loads(path.read_text())
    data["engines"] = trt_plan.replace_entry(list(data.get("engines", [])), entry)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    load_card(folder)  # still a valid card
