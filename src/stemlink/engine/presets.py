"""Named latency/quality trade-offs. The names are part of the interface; the numbers
depend on what the backend sustains (an inference must finish well inside H hops)."""

from __future__ import annotations

from dataclasses import dataclass

from stemlink.engine.errors import EngineError

PRESETS = ("ultra", "monitor", "balanced", "quality")


@dataclass(frozen=True)
class StreamConfig:
    hop_frames: int  # H: frames per inference; waiting for them adds (H-1)*hop of delay
    lookahead: int  # L: frames of future context each emitted frame gets; adds L*hop
    synthesis: str = "standard"  # "standard" Hann overlap-add or "asymmetric" (low delay)
    window_frames: int | None = None  # W; None = the model card's

    def validate(self, window_frames: int) -> None:
        if self.hop_frames < 1:
            raise EngineError(f"H (frames per inference) must be >= 1, not {self.hop_frames}")
        if self.lookahead < 0:
            raise EngineError(f"L (look-ahead frames) must be >= 0, not {self.lookahead}")
        if self.hop_frames + self.lookahead > window_frames:
            raise EngineError(
                f"H + L = {self.hop_frames + self.lookahead} exceeds the window of "
                f"{window_frames} frames")


def preset(name: str, accelerated: bool = False) -> StreamConfig:
    """accelerated: the backend finishes one window well inside one hop (a GPU)."""
    if name == "ultra":
        return StreamConfig(1 if accelerated else 2, 0, "asymmetric")
    if name == "monitor":
        return StreamConfig(1 if accelerated else 2, 0)
    if name == "balanced":
        return StreamConfig(4, 4)
    if name == "quality":
        return StreamConfig(4, 8)
    raise EngineError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
