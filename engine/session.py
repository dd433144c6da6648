"""Build a ready-to-run separator (card + active backend + config) from CLI-level choices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stemlink.engine import families
from stemlink.engine.backend import Backend
from stemlink.engine.card import ModelCard, load_card
from stemlink.engine.presets import StreamConfig
from stemlink.engine.streaming import StreamingSeparator


@dataclass
class Engine:
    card: ModelCard
    folder: Path
    backend: Backend
    kind: str

    @property
    def accelerated(self) -> bool:
        return self.kind != "cpu"

    def config(self, name: str | None, hop_frames: int | None = None,
               lookahead: int | None = None, synthesis: str | None = None,
               synthesis_hop: int | None = None, mask_hold: int | None = None) -> StreamConfig:
        """A preset's configuration with overrides (None = the preset's), validated; the
        card's family picks the preset table (engine/families.py)."""
        return families.config(self.card, name, self.accelerated, hop_frames, lookahead,
                               synthesis, synthesis_hop, mask_hold)

    def separator(self, config: StreamConfig, slot: int = 0) -> StreamingSeparator:
        return families.make_separator(self.card, self.backend, config, slot)

    def latency(self, config: StreamConfig):
        return families.latency(self.card, config)

    def close(self) -> None:
        self.backend.deactivate()


def open_engine(model: str | Path, backend: str = "cpu", *, graph: str = "streaming",
                batch: int = 1, **kw) -> Engine:
    folder = Path(model)
    card = load_card(folder)
    be = families.make_backend(backend, card, folder, graph=graph, batch=batch, **kw)
    be.activate()
    return Engine(card, folder, be, backend)
