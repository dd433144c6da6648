"""Measures the streaming separator's hot-path allocations in a fresh interpreter.

tracemalloc counts every thread's allocations, so inside the full test run a thread left
by an earlier test (a server, a client, a logger) can add its own bytes to a process()
call's peak. Run alone, the figure is the separator's. Usage (from the repo root):

    python -m tests.alloc_probe MODEL_DIR '{"hop_frames": 1, ...}'

prints one JSON line: worst per-call peak rise, bytes kept under the engine's code,
inferences run, live threads.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np

BLOCK = 1024  # samples per process() call
WARMUP_BLOCKS = 40
MEASURED_BLOCKS = 200


def probe(model_dir: str, cfg_fields: dict) -> dict:
    import stemlink.engine
    from stemlink.audio import read_audio
    from stemlink.engine.presets import StreamConfig
    from stemlink.engine.session import open_engine
    from stemlink.export.checkpoint import example_audio

    audio, _ = read_audio(example_audio())
    n = (WARMUP_BLOCKS + MEASURED_BLOCKS) * BLOCK
    x = np.ascontiguousarray(audio[:, :n])
    engine = open_engine(Path(model_dir), "cpu")
    sep = engine.separator(StreamConfig(**cfg_fields))
    engine_dir = str(Path(stemlink.engine.__file__).parent)
    # ONNX Runtime's Python binding keeps ~124 bytes per run for a while, depending on the
    # session's history: not ours, so it is left out of what is "kept".
    not_ort = [tracemalloc.Filter(True, f"{engine_dir}/*", all_frames=True),
               tracemalloc.Filter(False, "*onnxruntime*", all_frames=True)]
    worst = 0
    gc.collect()
    tracemalloc.start(32)
    try:
        for i in range(0, WARMUP_BLOCKS * BLOCK, BLOCK):
            sep.process(x[:, i:i + BLOCK])
        gc.collect()
        first = tracemalloc.take_snapshot().filter_traces(not_ort)
        for i in range(WARMUP_BLOCKS * BLOCK, n, BLOCK):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            sep.process(x[:, i:i + BLOCK])
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
        gc.collect()
        last = tracemalloc.take_snapshot().filter_traces(not_ort)
    finally:
        tracemalloc.stop()
    diff = last.compare_to(first, "traceback")
    kept = sum(d.size_diff for d in diff)
    top = [str(d) for d in diff[:3]]
    engine.close()
    return {"worst": worst, "kept": kept, "kept_top": top,
            "inferences": sep.stats.inferences, "threads": threading.active_count()}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], json.loads(sys.argv[2]))))
