"""Named latency/quality trade-offs. The names are part of the interface; the numbers
depend on what the backend sustains (an inference must finish inside its period: H model
hops, or k synthesis hops of m samples).

CPU values of k are the smallest whose real-time end-to-end run on the 2-core development
machine (quiet) missed no deadline: one inference per 1536 samples (34.8 ms). One per
1024 samples (ultra k = 2) missed 70 of ~6900 stem-block deadlines there, the inference's
p99 (20 ms) plus the client's and server's own work leaving no room in a 23.2 ms period.
docs/BENCHMARKS.md, "Lower delay: synthesis hop and mask hold", has the runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stemlink.engine.dsp import SYNTHESIS_MODES
from stemlink.engine.errors import EngineError

PRESETS = ("extreme", "ultra", "monitor", "balanced", "quality")
MODEL_INPUTS = ("masked", "hann")
MIN_SYNTHESIS_HOP = 128  # samples; below it the per-hop FFT work dominates (2.9 ms at 44.1 kHz)
MAX_MASK_HOLD = 64  # synthesis hops one mask may be applied for

# (m, k) per backend class: a GPU is expected to sustain one inference per synthesis hop
# (not measured here: no GPU); CPU: one per 1536 samples (see above).
ULTRA = {"accelerated": (512, 1), "cpu": (512, 3)}
EXTREME = {"accelerated": (128, 1), "cpu": (128, 12)}


@dataclass(frozen=True)
class StreamConfig:
    hop_frames: int  # H: model frames per inference; waiting for them adds (H-1)*hop
    lookahead: int  # L: model frames of future context per emitted frame; adds L*hop
    synthesis: str = "standard"  # "standard" Hann overlap-add or "asymmetric" (low delay)
    window_frames: int | None = None  # W; None = the model card's
    synthesis_hop: int | None = None  # m, samples between synthesis frames; None = the
    # model's hop. Below it, the asymmetric support 2m sets the delay floor.
    mask_hold: int = 1  # k: synthesis hops one mask is applied for (one inference per k*m)
    model_input: str = "masked"  # asymmetric synthesis: the model sees the magnitude of the
    # spectrum it masks ("masked") or of the Hann frame ("hann", the v1 behaviour)

    def hop(self, model_hop: int) -> int:
        """m in samples."""
        return self.synthesis_hop or model_hop

    def validate(self, window_frames: int, model_hop: int | None = None) -> None:
        if self.hop_frames < 1:
            raise EngineError(f"H (frames per inference) must be >= 1, not {self.hop_frames}")
        if self.lookahead < 0:
            raise EngineError(f"L (look-ahead frames) must be >= 0, not {self.lookahead}")
        if self.hop_frames + self.lookahead > window_frames:
            raise EngineError(
                f"H + L = {self.hop_frames + self.lookahead} exceeds the window of "
                f"{window_frames} frames")
        if self.synthesis not in SYNTHESIS_MODES:
            raise EngineError(f"synthesis must be one of {SYNTHESIS_MODES}")
        if self.model_input not in MODEL_INPUTS:
            raise EngineError(f"model input must be one of {MODEL_INPUTS}")
        if not 1 <= self.mask_hold <= MAX_MASK_HOLD:
            raise EngineError(f"mask hold k must be 1..{MAX_MASK_HOLD}, not {self.mask_hold}")
        if self.mask_hold > 1 and self.hop_frames > 1:
            raise EngineError("use either H > 1 (batched frames) or mask hold k > 1, not both")
        if model_hop is None or self.synthesis_hop is None:
            return
        m = self.synthesis_hop
        if m < MIN_SYNTHESIS_HOP or m > model_hop or model_hop % m:
            divisors = [d for d in range(MIN_SYNTHESIS_HOP, model_hop + 1)
                        if model_hop % d == 0]
            raise EngineError(f"synthesis hop must divide the model's hop ({model_hop}) and "
                              f"be >= {MIN_SYNTHESIS_HOP}: one of {divisors}, not {m}")
        if m < model_hop and self.synthesis != "asymmetric":
            raise EngineError("a synthesis hop below the model's hop needs asymmetric synthesis")
        if m < model_hop and self.hop_frames > 1:
            raise EngineError("H > 1 needs the synthesis hop to equal the model's hop; "
                              "use the mask hold k to lower the inference rate instead")


def with_overrides(base: StreamConfig, model_hop: int, window_frames: int,
                   hop_frames: int | None = None, lookahead: int | None = None,
                   synthesis: str | None = None, synthesis_hop: int | None = None,
                   mask_hold: int | None = None) -> StreamConfig:
    """A preset's configuration with overrides (None = the preset's), validated. Asking
    for a synthesis hop below the model's implies asymmetric synthesis unless set."""
    m = synthesis_hop if synthesis_hop is not None else base.synthesis_hop
    if synthesis is None and m is not None and m < model_hop:
        synthesis = "asymmetric"
    cfg = replace(
        base,
        hop_frames=hop_frames if hop_frames is not None else base.hop_frames,
        lookahead=lookahead if lookahead is not None else base.lookahead,
        synthesis=synthesis or base.synthesis,
        synthesis_hop=None if m is None or m == model_hop else m,
        mask_hold=mask_hold if mask_hold is not None else base.mask_hold,
    )
    cfg.validate(window_frames, model_hop)
    return cfg


def preset(name: str, accelerated: bool = False) -> StreamConfig:
    """accelerated: the backend finishes one window well inside one synthesis hop (a GPU)."""
    kind = "accelerated" if accelerated else "cpu"
    if name == "extreme":
        m, k = EXTREME[kind]
        return StreamConfig(1, 0, "asymmetric", synthesis_hop=m, mask_hold=k)
    if name == "ultra":
        m, k = ULTRA[kind]
        return StreamConfig(1, 0, "asymmetric", synthesis_hop=m, mask_hold=k)
    if name == "monitor":
        return StreamConfig(1 if accelerated else 2, 0)
    if name == "balanced":
        return StreamConfig(4, 4)
    if name == "quality":
        return StreamConfig(4, 8)
    raise EngineError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
