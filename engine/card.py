"""The model card: everything the server, client and separator need to know about a
model, so that nothing downstream is specific to one model."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stemlink.engine.errors import ModelCardError


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (sources and plans the card records), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CARD_FILE = "model.json"
CARD_VERSION = 1
REPRESENTATIONS = ("magnitude-mask", "complex-spectrogram", "hybrid")
MASK_EXTENSIONS = ("zeros", "average")
NAME_FORBIDDEN = frozenset("/\\,=") | frozenset(chr(i) for i in range(32))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # str entries are symbolic (dynamic) axes, e.g. "batch"
    dtype: str


@dataclass(frozen=True)
class GraphSpec:
    """One exported ONNX graph and the fixed time extent it was exported for."""

    file: str
    frames: int  # STFT frames per window (fixed in the graph)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelCard:
    name: str
    source: dict[str, Any]  # package, version, checkpoint paths and sha256
    licence: str
    sample_rate: int  # Hz
    channels: int
    stems: list[str]  # order of the stem axis in the mask output
    representation: str
    n_fft: int  # samples
    hop: int  # samples
    window: str  # analysis window of the model's STFT
    bins: int  # frequency bins the model sees (lowest `bins` of n_fft/2+1)
    window_frames: int  # W of the streaming graph
    mask_extension: str  # how bins above `bins` are masked: zeros or average
    streaming: GraphSpec  # fixed-shape graph used for streaming windows
    offline: GraphSpec  # graph used for whole-file reference separation
    exporter: dict[str, Any] = field(default_factory=dict)
    engines: list[dict[str, Any]] = field(default_factory=list)  # TensorRT plans, per GPU
    card_version: int = CARD_VERSION
    segment: int = 0  # samples per graph window for the segment families (hybrid, MDX)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CARD_FILE
        path.write_text(self.to_json())
        return path


def _spec(d: Any, where: str) -> GraphSpec:
    if not isinstance(d, dict):
        raise ModelCardError(f"{where} must be an object")
    try:
        ins = [TensorSpec(**t) for t in d["inputs"]]
        outs = [TensorSpec(**t) for t in d["outputs"]]
        return GraphSpec(file=str(d["file"]), frames=int(d["frames"]), inputs=ins, outputs=outs)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelCardError(f"{where} is malformed: {e}") from None


def card_from_dict(d: Any) -> ModelCard:
    if not isinstance(d, dict):
        raise ModelCardError("the card must be a JSON object")
    required = [
        "name", "sample_rate", "channels", "stems", "representation", "n_fft", "hop",
        "window", "bins", "window_frames", "streaming", "offline",
    ]
    missing = [k for k in required if k not in d]
    if missing:
        raise ModelCardError(f"card lacks {', '.join(missing)}")
    try:
        card = ModelCard(
            name=str(d["name"]),
            source=dict(d.get("source", {})),
            licence=str(d.get("licence", "unknown")),
            sample_rate=int(d["sample_rate"]),
            channels=int(d["channels"]),
            stems=[str(s) for s in d["stems"]],
            representation=str(d["representation"]),
            n_fft=int(d["n_fft"]),
            hop=int(d["hop"]),
            window=str(d["window"]),
            bins=int(d["bins"]),
            window_frames=int(d["window_frames"]),
            mask_extension=str(d.get("mask_extension", "zeros")),
            streaming=_spec(d["streaming"], "streaming"),
            offline=_spec(d["offline"], "offline"),
            exporter=dict(d.get("exporter", {})),
            engines=list(d.get("engines", [])),
            card_version=int(d.get("card_version", CARD_VERSION)),
            segment=int(d.get("segment", 0)),
        )
    except (TypeError, ValueError) as e:
        raise ModelCardError(f"card has a field of the wrong type: {e}") from None
    validate(card)
    return card


def validate(card: ModelCard) -> None:
    """Reject cards the separator could not honour; each check names the field."""
    if card.card_version != CARD_VERSION:
        raise ModelCardError(f"card_version {card.card_version} is not supported")
    if not (8000 <= card.sample_rate <= 192000):
        raise ModelCardError(f"sample_rate {card.sample_rate} is out of range")
    if card.channels not in (1, 2):
        raise ModelCardError(f"channels must be 1 or 2, not {card.channels}")
    if not card.stems or len(set(card.stems)) != len(card.stems) or len(card.stems) > 16:
        raise ModelCardError("stems must be 1 to 16 distinct names")
    if card.representation not in REPRESENTATIONS:
        raise ModelCardError(f"representation {card.representation!r} is unknown")
    _validate_wire(card)
    if card.representation == "magnitude-mask":
        _validate_mask(card)
    else:
        _validate_segment(card)
    if not math.isfinite(card.hop / card.sample_rate):
        raise ModelCardError("hop/sample_rate is not finite")


def _validate_mask(card: ModelCard) -> None:
    if card.n_fft <= 0 or card.n_fft & (card.n_fft - 1):
        raise ModelCardError(f"n_fft {card.n_fft} must be a power of two")
    if card.hop <= 0 or card.n_fft % card.hop:
        raise ModelCardError(f"hop {card.hop} must divide n_fft {card.n_fft}")
    if card.window != "hann":
        raise ModelCardError(f"window {card.window!r} is not supported (hann only)")
    if not (0 < card.bins <= card.n_bins):
        raise ModelCardError(f"bins {card.bins} must be within 1..{card.n_bins}")
    if card.mask_extension not in MASK_EXTENSIONS:
        raise ModelCardError(f"mask_extension must be one of {', '.join(MASK_EXTENSIONS)}")
    if card.window_frames <= 0 or card.streaming.frames != card.window_frames:
        raise ModelCardError("window_frames must match the streaming graph's frames")
    for g in (card.streaming, card.offline):
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise ModelCardError(f"{g.file}: expected one input and one output tensor")
        i, o = g.inputs[0].shape, g.outputs[0].shape
        if i[1:] != [card.channels, g.frames, card.bins]:
            raise ModelCardError(f"{g.file}: input shape {i} does not match the card")
        if o[1:] != [len(card.stems), card.channels, g.frames, card.bins]:
            raise ModelCardError(f"{g.file}: output shape {o} does not match the card")


def _validate_segment(card: ModelCard) -> None:
    """hybrid (HTDemucs) and complex-spectrogram (MDX-Net): one fixed waveform segment per
    graph run, STFT/iSTFT outside the graph (engine/segments.py)."""
    if card.window != "hann":
        raise ModelCardError(f"window {card.window!r} is not supported (hann only)")
    if card.n_fft <= 0 or card.n_fft % 2 or card.hop <= 0 or card.hop > card.n_fft:
        raise ModelCardError(f"n_fft {card.n_fft} must be even and hop {card.hop} within it")
    if card.segment < max(4 * card.hop, card.n_fft // 2 + 1):
        raise ModelCardError(f"segment {card.segment} samples is too short for n_fft "
                             f"{card.n_fft} / hop {card.hop}")
    c, s, f, t, n = card.channels, len(card.stems), card.bins, card.window_frames, card.segment
    g = card.streaming
    if card.representation == "hybrid":
        if f != card.n_fft // 2 or t != math.ceil(n / card.hop):
            raise ModelCardError("hybrid: bins must be n_fft/2 and window_frames ceil(segment/hop)")
        want_in = {"mix": [c, n], "spec": [2 * c, f, t]}
        want_out = {"time": [s, c, n], "spec_out": [s, 2 * c, f, t]}
    else:
        if s != 2:
            raise ModelCardError("complex-spectrogram: stems must be the model's stem and its "
                                 "complement (mixture minus it)")
        if not 0 < f <= card.n_bins or n != card.hop * (t - 1):
            raise ModelCardError("complex-spectrogram: bins must be within n_fft/2+1 and segment "
                                 "hop * (window_frames - 1)")
        want_in = {t_.name: [2 * c, f, t] for t_ in g.inputs}
        want_out = {t_.name: [2 * c, f, t] for t_ in g.outputs}
        if len(want_in) != 1 or len(want_out) != 1:
            raise ModelCardError(f"{g.file}: expected one input and one output tensor")
    if g.frames != t:
        raise ModelCardError("window_frames must match the streaming graph's frames")
    for specs, want in ((g.inputs, want_in), (g.outputs, want_out)):
        got = {t_.name: t_.shape[1:] for t_ in specs}
        if got != want:
            raise ModelCardError(f"{g.file}: tensors {got} do not match the card ({want})")


def _validate_wire(card: ModelCard) -> None:
    """Stems travel as a u8 index below MAX_STEMS, and the model and stem names all go in
    one ACCEPT datagram: refuse a card the wire could not announce."""
    from stemlink.wire.constants import MAX_STEMS
    from stemlink.wire.packets import WireError, check_accept_fits

    if len(card.stems) > MAX_STEMS:
        raise ModelCardError(f"{len(card.stems)} stems: the wire carries at most {MAX_STEMS}")
    for s in card.stems:  # names become <stem>.wav files and --monitor stem=gain specs
        if s != s.strip() or any(ch in s for ch in NAME_FORBIDDEN) or s in (".", ".."):
            raise ModelCardError(f"stem names must not contain / \\ , = or control "
                                 f"characters or surrounding spaces: {s[:40]!r}")
    try:
        check_accept_fits(card.name, card.stems)
    except WireError as e:
        if e.reason == "bad-name":
            raise ModelCardError("model and stem names must be 1 to 64 bytes of UTF-8 "
                                 "each") from None
        raise ModelCardError(str(e).removeprefix("bad-accept: ")) from None


def load_card(folder: str | Path) -> ModelCard:
    """Read and validate `folder/model.json` and check the graphs it names exist."""
    folder = Path(folder)
    if not folder.is_dir():
        where = "" if folder.is_absolute() else f" in {Path.cwd()}"
        raise ModelCardError(
            f"model folder {folder} does not exist{where}: pass --model DIR, or make it with "
            f"`stemlink export spleeter --out {folder}`")
    path = folder / CARD_FILE
    if not path.is_file():
        raise ModelCardError(f"{path} is missing: not a stemlink model folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelCardError(f"{path} is not readable JSON: {e}") from None
    card = card_from_dict(data)
    for g in (card.streaming, card.offline):
        if not (folder / g.file).is_file():
            raise ModelCardError(f"{folder / g.file} named by the card is missing")
    return card
