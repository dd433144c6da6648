"""Build a ready-to-run separator (card + active backend + config) from CLI-level choices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stemlink.engine.backend import Backend, make_backend
from stemlink.engine.card import ModelCard, load_card
from stemlink.engine.presets import StreamConfig, preset, with_overrides
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
        """A preset's configuration with overrides (None = the preset's), validated."""
        return with_overrides(preset(name or "monitor", self.accelerated), self.card.hop,
                              self.card.window_frames, hop_frames, lookahead, synthesis,
                              synthesis_hop, mask_hold)

    def separator(self, config: StreamConfig, slot: int = 0) -> StreamingSeparator:
        return StreamingSeparator(self.card, self.backend, config, slot=slot)

    def close(self) -> None:
        self.backend.deactivate()


def open_engine(model: str | Path, backend: str = "cpu", *, graph: str = "streaming",
                batch: int = 1, **kw) -> Engine:
    folder = Path(model)
    card = load_card(folder)
    be = make_backend(backend, card, folder, graph=graph, batch=batch, **kw)
    be.activate()
    return Engine(card, folder, be, backend)
