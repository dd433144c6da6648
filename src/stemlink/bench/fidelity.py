"""`stemlink bench fidelity`: SDR of streamed stems against the same model run offline on
the whole file (MDX definition), per preset / configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.bench.machine import machine
from stemlink.bench.stats import markdown_table
from stemlink.engine.offline import separate_offline
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
SONG_SEED = 0  # `stemlink bench make-song --seed 0 --seconds 10` writes the same song
SONG_SECONDS = 10.0


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - estimate)**2), 1e-20)))


def bench_fidelity(model: str, audio_path: str | None) -> dict:
    from stemlink.export.checkpoint import example_audio

    src = audio_path or str(example_audio())
    x, sr = aio.read_audio(src)
    off = open_engine(model, graph="offline")
    try:
        card = off.card
        x = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
        ref = separate_offline(card, off.backend, x)
    finally:
        off.close()
    eng = open_engine(model)
    rows = []
    try:
        for label, h, l, syn in CONFIGS:
            sep = eng.separator(StreamConfig(h, l, syn))
            y = stream_array(sep, x)
            rows.append({"config": label, "H": h, "L": l, "synthesis": syn,
                         "delay_samples": sep.delay, "delay_ms": sep.latency.ms,
                         "sdr_db": {s: sdr(ref[i], y[i]) for i, s in enumerate(card.stems)}})
    finally:
        eng.close()
    return {"benchmark": "fidelity", "audio": Path(src).name, "stems": card.stems,
            "rows": rows, "machine": machine(), "command": "stemlink " + " ".join(sys.argv[1:])}


def _reference(model: str, x: np.ndarray) -> np.ndarray:
    off = open_engine(model, graph="offline")
    try:
        return separate_offline(off.card, off.backend, x)
    finally:
        off.close()


def bench_fidelity_grid(model: str, audio_path: str | None, song_seed: int = SONG_SEED,
                        say=lambda s: None) -> dict:
    """The (m, k) grid with asymmetric synthesis and the model fed the masked spectrum,
    plus the v1 cadences: SDR vs offline on the example (or --audio) and on a generated
    song (`stemlink bench make-song`, seeded, 10 s)."""
    from stemlink.bench.song import make_song
    from stemlink.export.checkpoint import example_audio

    src = audio_path or str(example_audio())
    x, sr = aio.read_audio(src)
    eng = open_engine(model)
    card = eng.card
    audios = {Path(src).name: aio.resample(aio.to_channels(x, card.channels), sr,
                                           card.sample_rate),
              f"make-song seed {song_seed}, {SONG_SECONDS:g} s":
                  make_song(SONG_SECONDS, song_seed, card.sample_rate)}
    configs = [(1, m, k, "masked") for m in GRID_HOPS for k in GRID_HOLDS] + GRID_EXTRA
    rows = [{"H": h, "m": m, "k": k, "model_input": feed} for h, m, k, feed in configs]
    try:
        for name, audio in audios.items():
            ref = _reference(model, audio)
            for row in rows:
                cfg = StreamConfig(row["H"], 0, "asymmetric", synthesis_hop=row["m"],
                                   mask_hold=row["k"], model_input=row["model_input"])
                sep = eng.separator(cfg)
                y = stream_array(sep, audio)
                row.update(delay_samples=sep.delay, delay_ms=sep.latency.ms,
                           inferences_per_s=card.sample_rate / sep.latency.period)
                row.setdefault("sdr_db", {})[name] = {
                    s: sdr(ref[i], y[i]) for i, s in enumerate(card.stems)}
                say(f"{name}: H={row['H']} m={row['m']} k={row['k']} {row['model_input']}: "
                    + " / ".join(f"{v:.2f}" for v in row["sdr_db"][name].values()))
    finally:
        eng.close()
    return {"benchmark": "fidelity-grid", "audios": list(audios), "stems": card.stems,
            "rows": rows, "machine": machine(),
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
    rows = [[x["config"], x["H"], x["L"], x["synthesis"], x["delay_samples"],
             f"{x['delay_ms']:.1f}"] + [f"{x['sdr_db'][s]:.2f}" for s in r["stems"]]
            for x in r["rows"]]
    return (f"fidelity vs offline on {r['audio']} (SDR dB)\ncommand: {r['command']}\n\n" +
            markdown_table(["config", "H", "L", "synthesis", "D samples", "D ms"] +
                           [f"{s} SDR" for s in r["stems"]], rows))


def save(r: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(r, indent=2) + "\n")
