"""`stemlink bench fidelity`: SDR of streamed stems against the same model run offline on
the whole file (MDX definition), per preset / configuration."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.bench.machine import machine
from stemlink.bench.stats import markdown_table
from stemlink.engine import families
from stemlink.engine.presets import PRESETS, StreamConfig
from stemlink.engine.session import open_engine
from stemlink.separate import stream_array

CONFIGS = [  # (label, H, L, synthesis)
    ("quality", 4, 8, "standard"), ("balanced", 4, 4, "standard"),
    ("H=4 L=0", 4, 0, "standard"), ("monitor (CPU)", 2, 0, "standard"),
    ("monitor (GPU)", 1, 0, "standard"), ("ultra (CPU)", 2, 0, "asymmetric"),
    ("ultra (GPU)", 1, 0, "asymmetric"),
]


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - estimate)**2), 1e-20)))


def bench_fidelity(model: str, audio_path: str | None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    from stemlink.export.checkpoint import example_audio

    src = audio_path or str(example_audio())
    x, sr = aio.read_audio(src)
    if progress:
        progress(0, 1 + len(CONFIGS))
    off = open_engine(model, graph="offline")
    try:
        card = off.card
        x = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
        ref = families.separate_offline(card, off.backend, x)
        if progress:
            progress(1, 1 + len(CONFIGS))
    finally:
        off.close()
    eng = open_engine(model)
    rows = []
    try:
        if families.is_segment(card):  # the family's own presets (engine/families.py)
            configs = [(name, eng.config(name)) for name in PRESETS[::-1]]
        else:
            configs = [(label, StreamConfig(h, l, syn)) for label, h, l, syn in CONFIGS]
        for label, cfg in configs:
            sep = eng.separator(cfg)
            y = stream_array(sep, x)
            syn = families.synthesis_label(cfg)
            rows.append({"config": label, "H": cfg.hop_frames, "L": cfg.lookahead,
                         "synthesis": syn,
                         "delay_samples": sep.delay, "delay_ms": sep.latency.ms,
                         "sdr_db": {s: sdr(ref[i], y[i]) for i, s in enumerate(card.stems)}})
            if families.is_segment(card):
                # streaming cannot know where the file ends; offline pads its last chunk
                # with audio from both sides: SDR again without the last segment + stride
                # (None when the clip is shorter than that: use a longer --audio)
                cut = x.shape[1] - card.segment - sep.latency.stride
                rows[-1]["sdr_db_before_end"] = {
                    s: sdr(ref[i, :, :cut], y[i, :, :cut]) if cut > 0 else None
                    for i, s in enumerate(card.stems)}
            if progress:
                progress(1 + len(rows), 1 + len(CONFIGS))
    finally:
        eng.close()
    return {"benchmark": "fidelity", "audio": Path(src).name, "stems": card.stems,
            "model": card.name, "representation": card.representation,
            "rows": rows, "machine": machine(), "command": "stemlink " + " ".join(sys.argv[1:])}


def _db(v: float | None) -> str:
    return "n/a (clip too short)" if v is None else f"{v:.2f}"


def render(r: dict) -> str:
    end = any("sdr_db_before_end" in x for x in r["rows"])
    rows = [[x["config"], x["H"], x["L"], x["synthesis"], x["delay_samples"],
             f"{x['delay_ms']:.1f}"] + [f"{x['sdr_db'][s]:.2f}" for s in r["stems"]] +
            ([_db(x["sdr_db_before_end"][s]) for s in r["stems"]] if end else [])
            for x in r["rows"]]
    head = ["config", "H", "L", "synthesis", "D samples", "D ms"] + \
        [f"{s} SDR" for s in r["stems"]] + \
        ([f"{s} SDR before the end" for s in r["stems"]] if end else [])
    return (f"fidelity vs offline on {r['audio']} (SDR dB)\ncommand: {r['command']}\n\n" +
            markdown_table(head, rows))


def save(r: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(r, indent=2) + "\n")
