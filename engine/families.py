"""One place that knows which separator, backend, presets and offline reference go with a
card's representation:

| representation | family | streaming | offline reference |
|---|---|---|---|
| magnitude-mask | Spleeter | StreamingSeparator (frames, masks) | separate_offline |
| hybrid | HTDemucs | ChunkedSeparator + HybridRunner | apply_model-equivalent chunks |
| complex-spectrogram | MDX-Net / UVR | ChunkedSeparator + MdxRunner | the same chunks |

Presets of the segment families are fractions of the segment (N hops): they trade delay
for how much future context the model sees, and cost one whole-segment run per H hops.
- quality: whole segments, 25 % overlap: identical to the offline reference; D = segment.
- balanced: H = N/4, L = N/4: D ~ 3/4 segment.
- monitor: H = N/8, L = 0: D ~ 1/4 segment.
- ultra: H = N/16, L = 0: D ~ 1/8 segment (eight runs per segment of audio).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError
from stemlink.engine.presets import PRESETS, StreamConfig, with_overrides
from stemlink.engine.presets import preset as mask_preset
from stemlink.engine.streaming_chunked import ChunkConfig

SEGMENT_FAMILIES = ("hybrid", "complex-spectrogram")
WIRE_U8 = 255
SEGMENT_FRACTIONS = {"balanced": (4, 4), "monitor": (8, None), "ultra": (16, None)}


def is_segment(card: ModelCard) -> bool:
    return card.representation in SEGMENT_FAMILIES


def presets_for(card: ModelCard) -> tuple[str, ...]:
    """The preset names a model's family runs (segment models have no `extreme`)."""
    if not is_segment(card):
        return PRESETS
    return tuple(p for p in PRESETS if p == "quality" or p in SEGMENT_FRACTIONS)


def preset(card: ModelCard, name: str, accelerated: bool = False) -> StreamConfig | ChunkConfig:
    if not is_segment(card):
        return mask_preset(name, accelerated)
    if name not in PRESETS:
        raise EngineError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name != "quality" and name not in SEGMENT_FRACTIONS:
        raise EngineError(f"preset {name!r} needs a frame model (synthesis hop below the "
                          f"model's); {card.representation} models run whole segments: use "
                          f"one of quality, {', '.join(SEGMENT_FRACTIONS)}")
    n = card.segment // card.hop
    if name == "quality":  # H is informational here (the stride is 3/4 of the segment)
        return ChunkConfig(min(WIRE_U8, max(1, card.segment * 3 // 4 // card.hop)), 0,
                           whole=True)
    h_div, l_div = SEGMENT_FRACTIONS[name]
    # H and L travel as u8 in ACCEPT: segments over ~23 s get smaller fractions
    return ChunkConfig(min(WIRE_U8, max(1, n // h_div)), min(WIRE_U8, n // l_div) if l_div
                       else 0)


def config(card: ModelCard, name: str | None, accelerated: bool, hop_frames: int | None,
           lookahead: int | None, synthesis: str | None, synthesis_hop: int | None = None,
           mask_hold: int | None = None) -> StreamConfig | ChunkConfig:
    base = preset(card, name or "monitor", accelerated)
    if isinstance(base, ChunkConfig):
        if synthesis_hop is not None or mask_hold is not None:
            raise EngineError(f"--synthesis-hop and --mask-hold apply to frame models, not "
                              f"to {card.representation} models")
        if hop_frames is None and lookahead is None:
            return base
        # an explicit H or L means the low-delay mode with those numbers
        return ChunkConfig(hop_frames if hop_frames is not None else base.hop_frames,
                           lookahead if lookahead is not None else
                           (0 if base.whole else base.lookahead))
    return with_overrides(base, card.hop, card.window_frames, hop_frames, lookahead,
                          synthesis, synthesis_hop, mask_hold)


def make_backend(kind: str, card: ModelCard, folder: str | Path, **kw):
    if not is_segment(card):
        from stemlink.engine.backend import make_backend as mask_backend

        return mask_backend(kind, card, folder, **kw)
    from stemlink.engine.graph import OrtGraphBackend

    if kind not in ("cpu", "cuda"):
        raise EngineError(f"backend {kind!r} does not run {card.representation} models; "
                          "use --backend cpu or cuda")
    kw.pop("spin", None)
    return OrtGraphBackend(card, folder, provider=kind, **kw)


def latency(card: ModelCard, cfg):
    if isinstance(cfg, ChunkConfig):
        from stemlink.engine.streaming_chunked import chunk_latency

        return chunk_latency(card, cfg)
    from stemlink.engine.streaming import latency_of

    return latency_of(card, cfg)


def make_separator(card: ModelCard, backend, cfg, slot: int = 0):
    if isinstance(cfg, ChunkConfig):
        from stemlink.engine.segments import make_runner
        from stemlink.engine.streaming_chunked import ChunkedSeparator

        if slot != 0:
            raise EngineError("segment families run one stream per backend (slot 0)")
        return ChunkedSeparator(card, make_runner(card, backend), cfg)
    from stemlink.engine.streaming import StreamingSeparator

    return StreamingSeparator(card, backend, cfg, slot=slot)


def separate_offline(card: ModelCard, backend, audio: np.ndarray,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    if is_segment(card):
        from stemlink.engine.offline_chunked import separate_offline_chunked
        from stemlink.engine.segments import make_runner

        return separate_offline_chunked(make_runner(card, backend), len(card.stems), audio,
                                        progress)
    from stemlink.engine.offline import separate_offline as mask_offline

    return mask_offline(card, backend, audio, progress)


def describe_config(cfg) -> str:
    if isinstance(cfg, ChunkConfig):
        return ("whole segments (offline-equivalent)" if cfg.whole
                else f"H={cfg.hop_frames} L={cfg.lookahead} hops, cross-faded regions")
    return f"H={cfg.hop_frames} L={cfg.lookahead} {cfg.synthesis}"


def synthesis_label(cfg) -> str:
    """For tables: how a configuration builds its output."""
    if isinstance(cfg, ChunkConfig):
        return "whole segments" if cfg.whole else "cross-faded regions"
    return cfg.synthesis
