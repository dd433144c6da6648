"""`stemlink import mdx`: wrap a UVR/MDX-Net ONNX file into a model card.

UVR's MDX-Net models take [B, 4, dim_f, dim_t] (L-re, L-im, R-re, R-im of a hop-1024,
periodic-Hann, centred STFT of one segment of hop * (dim_t - 1) samples, lowest dim_f
bins) and return the named stem's spectrogram in the same layout. n_fft, dim_f and dim_t
are not stored in the file: UVR keeps them in a side table (model_data.json), so they are
flags here, checked against the file's tensor shapes. The second stem is the mixture
minus the first. The file is copied into the model folder unchanged.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from pathlib import Path

from stemlink import __version__
from stemlink.engine.card import GraphSpec, ModelCard, TensorSpec
from stemlink.export.errors import ExportError

HOP = 1024
SAMPLE_RATE = 44100
CHANNELS = 2
GRAPH_FILE = "model.onnx"


def complement_name(stem: str) -> str:
    return "instrumental" if stem == "vocals" else f"no_{stem}"


def _dims(t) -> list:
    shape = t.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def import_mdx(onnx_path: str | Path, out: str | Path, *, n_fft: int, dim_f: int, dim_t: int,
               stem: str, complement: str | None = None, hop: int = HOP,
               say: Callable[[str], None] = print) -> ModelCard:
    try:
        import onnx
    except ImportError:
        raise ExportError("importing needs the onnx package: pip install 'stemlink[export]'") \
            from None
    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"{src} does not exist")
    if n_fft <= 0 or n_fft % 2 or hop <= 0 or hop > n_fft:
        raise ExportError(f"--n-fft {n_fft} must be even and at least the hop ({hop})")
    if not 0 < dim_f <= n_fft // 2 + 1:
        raise ExportError(f"--dim-f {dim_f} must be within 1..{n_fft // 2 + 1} (n_fft/2 + 1)")
    if dim_t < 2:
        raise ExportError(f"--dim-t {dim_t} must be at least 2")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # protobuf decode errors have several types
        raise ExportError(f"{src} is not an ONNX model: {type(e).__name__}") from None
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    outs = list(model.graph.output)
    if len(ins) != 1 or len(outs) != 1:
        raise ExportError(f"{src.name}: expected one input and one output, found "
                          f"{len(ins)} and {len(outs)}")
    want = [2 * CHANNELS, dim_f, dim_t]
    for kind, t in (("input", ins[0]), ("output", outs[0])):
        got = _dims(t)
        if len(got) != 4 or any(isinstance(g, int) and g > 0 and g != w
                                for g, w in zip(got[1:], want, strict=True)):
            raise ExportError(f"{src.name}: {kind} {t.name} has shape {got}, the flags say "
                              f"[batch, {', '.join(map(str, want))}] (--dim-f {dim_f} "
                              f"--dim-t {dim_t}, 2 channels as re/im)")
        if t.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{src.name}: {kind} {t.name} is not float32")
    comp = complement or complement_name(stem)
    seg = hop * (dim_t - 1)
    graph = GraphSpec(file=GRAPH_FILE, frames=dim_t,
                      inputs=[TensorSpec(ins[0].name, ["batch"] + want, "float32")],
                      outputs=[TensorSpec(outs[0].name, ["batch"] + want, "float32")])
    from stemlink.engine.card import sha256

    card = ModelCard(
        name=f"mdx-{stem}-{src.stem}"[:64], source={"file": src.name, "sha256": sha256(src)},
        licence="see the model's release (UVR models: check each model's own terms)",
        sample_rate=SAMPLE_RATE, channels=CHANNELS, stems=[stem, comp],
        representation="complex-spectrogram", n_fft=n_fft, hop=hop, window="hann",
        bins=dim_f, window_frames=dim_t, mask_extension="zeros", streaming=graph,
        offline=graph,
        exporter={"stemlink": __version__, "onnx": onnx.__version__,
                  "python": platform.python_version(), "imported": True},
        segment=seg,
    )
    from stemlink.engine.card import ModelCardError, validate

    try:
        validate(card)
    except ModelCardError as e:
        raise ExportError(str(e)) from None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / GRAPH_FILE)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror}") from None
    say(f"checking {src.name} in ONNX Runtime: [1, 4, {dim_f}, {dim_t}] -> same")
    _check_runs(card, out)
    card.save(out)
    say(f"{stem} + {comp} (mixture minus {stem}); segment {seg} samples "
        f"({seg / SAMPLE_RATE:.2f} s), n_fft {n_fft}, hop {hop}")
    return card


def _check_runs(card: ModelCard, folder: Path) -> None:
    from stemlink.engine.errors import EngineError
    from stemlink.engine.graph import OrtGraphBackend

    be = OrtGraphBackend(card, folder)
    try:
        be.activate()  # loads, checks the shapes ORT infers, runs once
    except EngineError as e:
        (folder / GRAPH_FILE).unlink(missing_ok=True)
        raise ExportError(str(e)) from None
    finally:
        be.deactivate()
