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
from stemlink.engine.presets import StreamConfig
from stemlink.engine.session import open_engine
from stemlink.separate import stream_array

CONFIGS = [  # (label, H, L, synthesis)
    ("quality", 4, 8, "standard"), ("balanced", 4, 4, "standard"),
    ("H=4 L=0", 4, 0, "standard"), ("monitor (CPU)", 2, 0, "standard"),
    ("monitor (GPU)", 1, 0, "standard"), ("asymmetric H=2", 2, 0, "asymmetric"),
    ("asymmetric H=1", 1, 0, "asymmetric"),
]
GRID_HOPS = (1024, 512, 256, 128)  # synthesis hop m, samples
GRID_HOLDS = (1, 2, 4, 8)  # mask hold k, synthesis hops per inference
GRID_EXTRA = [  # (H, m, k, model input): the v1 asymmetric cadences, before/after change 1
    (1, 1024, 1, "hann"), (2, 1024, 1, "hann"), (2, 1024, 1, "masked")]


def _preset_rows() -> list[tuple[int, int, int, str]]:
    """The CPU presets' (m, k) where the grid does not hold them (engine/presets.py)."""
    from stemlink.engine.presets import EXTREME, ULTRA

    return [(1, m, k, "masked") for m, k in (ULTRA["cpu"], EXTREME["cpu"])
            if not (m in GRID_HOPS and k in GRID_HOLDS)]
SONG_SEED = 0  # `stemlink bench make-song --seed 0 --seconds 10` writes the same song
SONG_SECONDS = 10.0


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
            configs = [(name, eng.config(name)) for name in families.presets_for(eng.card)[::-1]]
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


def _reference(model: str, x: np.ndarray) -> np.ndarray:
    off = open_engine(model, graph="offline")
    try:
        return families.separate_offline(off.card, off.backend, x)
    finally:
        off.close()


_WORKER: dict = {}


def _grid_audios(audio_path: str | None, song_seed: int, rate: int, channels: int) -> dict:
    from stemlink.bench.song import make_song
    from stemlink.export.checkpoint import example_audio

    src = audio_path or str(example_audio())
    x, sr = aio.read_audio(src)
    return {Path(src).name: aio.resample(aio.to_channels(x, channels), sr, rate),
            f"make-song seed {song_seed}, {SONG_SECONDS:g} s":
                make_song(SONG_SECONDS, song_seed, rate)}


def _grid_task(model: str, audio_path: str | None, song_seed: int, threads: int,
               name: str, row: dict) -> dict:
    """One (audio, configuration) cell, in a worker process that keeps its engine, audio
    and offline references between tasks."""
    if "engine" not in _WORKER:
        eng = open_engine(model, threads=threads)
        _WORKER.update(engine=eng, refs={}, audios=_grid_audios(
            audio_path, song_seed, eng.card.sample_rate, eng.card.channels))
    eng, audio = _WORKER["engine"], _WORKER["audios"][name]
    if name not in _WORKER["refs"]:
        _WORKER["refs"][name] = _reference(model, audio)
    ref = _WORKER["refs"][name]
    cfg = StreamConfig(row["H"], 0, "asymmetric", synthesis_hop=row["m"], mask_hold=row["k"],
                       model_input=row["model_input"])
    sep = eng.separator(cfg)
    y = stream_array(sep, audio)
    return {"delay_samples": sep.delay, "delay_ms": sep.latency.ms,
            "inferences_per_s": eng.card.sample_rate / sep.latency.period,
            "sdr_db": {s: sdr(ref[i], y[i]) for i, s in enumerate(eng.card.stems)}}


def bench_fidelity_grid(model: str, audio_path: str | None, song_seed: int = SONG_SEED,
                        jobs: int = 1, say=lambda s: None) -> dict:
    """The (m, k) grid with asymmetric synthesis and the model fed the masked spectrum,
    plus the v1 cadences: SDR vs offline on the example (or --audio) and on a generated
    song (`stemlink bench make-song`, seeded, 10 s). Cells run in `jobs` processes (one
    ONNX Runtime thread each when jobs > 1); results do not depend on the split beyond
    float rounding in the model (< 0.01 dB)."""
    from concurrent.futures import ProcessPoolExecutor

    from stemlink.engine.card import load_card

    card = load_card(model)
    names = list(_grid_audios(audio_path, song_seed, card.sample_rate, card.channels))
    configs = ([(1, m, k, "masked") for m in GRID_HOPS for k in GRID_HOLDS] + GRID_EXTRA
               + _preset_rows())
    rows = [{"H": h, "m": m, "k": k, "model_input": feed, "sdr_db": {}}
            for h, m, k, feed in configs]
    cells = sorted(((name, i) for name in names for i in range(len(rows))),
                   key=lambda c: rows[c[1]]["m"] * rows[c[1]]["k"] * rows[c[1]]["H"])
    threads = 1 if jobs > 1 else 0  # 0: the backend's default (all cores)
    with ProcessPoolExecutor(max_workers=jobs) as pool:  # costliest cells first
        futures = {pool.submit(_grid_task, model, audio_path, song_seed, threads, name,
                               {k: v for k, v in rows[i].items() if k != "sdr_db"}):
                   (name, i) for name, i in cells}
        for fut, (name, i) in futures.items():
            res = fut.result()
            row = rows[i]
            row["sdr_db"][name] = res.pop("sdr_db")
            row.update(res)
            say(f"{name}: H={row['H']} m={row['m']} k={row['k']} {row['model_input']}: "
                + " / ".join(f"{v:.2f}" for v in row["sdr_db"][name].values()))
    return {"benchmark": "fidelity-grid", "audios": names, "stems": card.stems,
            "rows": rows, "machine": machine(), "jobs": jobs,
            "command": "stemlink " + " ".join(sys.argv[1:])}


def render_grid(r: dict) -> str:
    rows = []
    for x in r["rows"]:
        rows.append([x["m"], x["k"], x["H"], x["model_input"], x["delay_samples"],
                     f"{x['delay_ms']:.1f}", f"{x['inferences_per_s']:.1f}"] +
                    [" / ".join(f"{x['sdr_db'][a][s]:.2f}" for s in r["stems"])
                     for a in r["audios"]])
    return (f"fidelity vs offline, asymmetric synthesis, SDR dB ({' / '.join(r['stems'])})"
            f"\ncommand: {r['command']}\n\n" + markdown_table(
                ["m", "k", "H", "model input", "D samples", "D ms", "inferences/s"] +
                list(r["audios"]), rows))


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
