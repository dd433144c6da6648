"""File-to-stems separation, streaming (the real-time path, run as fast as possible) or
offline (the whole-file reference). Output files match the input in length, channel
count, sample rate and alignment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.engine import families
from stemlink.engine.session import open_engine
from stemlink.engine.streaming import StreamingSeparator

BLOCK = 4096


@dataclass
class SeparateResult:
    files: dict[str, Path]
    sample_rate: int
    samples: int
    channels: int
    delay: int | None  # D of the streaming separator, removed from the files
    describe: str
    nonfinite: int = 0
    clipped: dict[str, int] = field(default_factory=dict)


def stream_array(sep: StreamingSeparator, x: np.ndarray,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Run [C, n] through the streaming separator; return [S, C, n] with D removed."""
    d = sep.delay
    n = x.shape[1]
    s = len(sep.card.stems)
    out = np.zeros((s, x.shape[0], n + d), np.float32)
    padded = np.zeros((x.shape[0], n + d), np.float32)
    padded[:, :n] = x
    if progress:
        progress(0, n + d)
    for i in range(0, n + d, BLOCK):
        blk = padded[:, i:i + BLOCK]
        out[:, :, i:i + blk.shape[1]] = sep.process(blk)
        if progress:
            progress(min(i + BLOCK, n + d), n + d)
    return out[:, :, d:]


def separate_file(inp: str | Path, model: str | Path, out_dir: str | Path, *,
                  preset: str | None = "monitor", offline: bool = False, backend: str = "cpu",
                  hop_frames: int | None = None, lookahead: int | None = None,
                  synthesis: str | None = None, synthesis_hop: int | None = None,
                  mask_hold: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> SeparateResult:
    x, sr = aio.read_audio(inp)
    nonfinite = aio.sanitize(x)
    channels, n = x.shape
    engine = open_engine(model, backend, graph="offline" if offline else "streaming")
    try:
        card = engine.card
        xm = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
        if offline:
            stems = families.separate_offline(card, engine.backend, xm, progress)
            delay, describe = None, ("offline (apply_model-equivalent segments, overlap "
                                     "0.25): the best stems; --preset NAME previews a live "
                                     "stream" if families.is_segment(card)
                                     else "whole-file model (offline): the best stems; "
                                     "--preset NAME previews a live stream")
        else:
            cfg = engine.config(preset, hop_frames, lookahead, synthesis, synthesis_hop,
                                mask_hold)
            sep = engine.separator(cfg)
            stems = stream_array(sep, xm, progress)
            delay = sep.delay
            describe = (f"streaming {preset or 'custom'}: {families.describe_config(cfg)}, "
                        f"{sep.latency.describe()}")
    finally:
        engine.close()
    stems = np.stack([aio.resample(s, card.sample_rate, sr, length=n) for s in stems])
    stems = aio.from_channels(stems, channels)
    out = Path(out_dir)
    files, clipped = {}, {}
    for name, s in zip(card.stems, stems, strict=True):
        files[name] = out / f"{name}.wav"
        clipped[name] = aio.write_audio(files[name], s, sr)
    return SeparateResult(files, sr, n, channels, delay, describe, nonfinite, clipped)
