"""`stemlink export htdemucs`: a local HTDemucs checkpoint -> ONNX segment graph + model card.

The model is built by the `demucs` package's own loader (`demucs.states.load_model`) from
either the `.th` package format the official releases use ({klass, args, kwargs, state})
or a plain {"state": state_dict, "kwargs": {...}} dict. Loading a `.th` file unpickles it:
only export checkpoints you trust.

The graph is HTDemucs.forward split where it calls _spec/_magnitude and _mask/_ispec: the
STFT and iSTFT stay outside (numpy, `stemlink.engine.segments`), the graph takes the mix
waveform and its complex spectrogram as real/imag channels (the model's CaC input) and
returns the time branch and the spectral branch separately, for one fixed segment.
Random shifts are not part of the graph (apply_model's `shifts`; here always 0).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stemlink import __version__
from stemlink.engine.card import GraphSpec, ModelCard, TensorSpec, sha256
from stemlink.export.errors import ExportError

TOLERANCE = 1e-3  # max |ORT - PyTorch| on real audio, relative to the mixture's peak
GRAPH_FILE = "model.onnx"
OPSET = 17


def load_htdemucs(path: str | Path):
    """Build the model through demucs' loader; one clear ExportError for anything else."""
    try:
        import torch
        from demucs.htdemucs import HTDemucs
        from demucs.states import load_model
    except ImportError as e:
        raise ExportError(f"exporting HTDemucs needs the export extra ({e.name} missing): "
                          "pip install 'stemlink[export]'") from None
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pkg = torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and torch errors alike: not a checkpoint
        raise ExportError(f"{p} is not a readable torch checkpoint: {type(e).__name__}") from None
    if not isinstance(pkg, dict):
        raise ExportError(f"{p} holds a {type(pkg).__name__}, not a demucs package or state dict")
    if "klass" not in pkg:  # state dict + kwargs: give demucs' loader the package it expects
        state = pkg.get("state", pkg.get("state_dict"))
        if not isinstance(state, dict) or not isinstance(pkg.get("kwargs"), dict):
            raise ExportError(f"{p} is neither a demucs .th package (klass, args, kwargs, "
                              "state) nor a dict with 'state' and 'kwargs'")
        pkg = {"klass": HTDemucs, "args": list(pkg.get("args", [])), "kwargs": pkg["kwargs"],
               "state": state}
    if pkg.get("klass") is not HTDemucs:
        raise ExportError(f"{p} holds a {getattr(pkg.get('klass'), '__name__', '?')} model; "
                          "only HTDemucs (one model, not a bag) is supported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(pkg)
    except Exception as e:  # wrong kwargs or mismatched tensors
        raise ExportError(f"demucs could not build the model from {p}: "
                          f"{str(e).splitlines()[0][:200]}") from None
    if not model.cac:
        raise ExportError("only complex-as-channels HTDemucs (cac=True, as released) can be "
                          "exported; this one uses Wiener filtering")
    return model.float().eval()


def _core_class():
    import torch
    from einops import rearrange

    class HTDemucsCore(torch.nn.Module):
        """HTDemucs.forward between _magnitude and _mask (demucs 4.x), unchanged otherwise:
        (mix [B,C,L], spec [B,2C,F,T]) -> (time [B,S,C,L], spec [B,S,2C,F,T])."""

        def __init__(self, model) -> None:
            super().__init__()
            self.m = model

        def forward(self, mix, mag):
            m = self.m
            x = mag
            B, C, Fq, T = x.shape
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (1e-5 + std)
            xt = mix
            meant = xt.mean(dim=(1, 2), keepdim=True)
            stdt = xt.std(dim=(1, 2), keepdim=True)
            xt = (xt - meant) / (1e-5 + stdt)
            saved, saved_t, lengths, lengths_t = [], [], [], []
            for idx, encode in enumerate(m.encoder):
                lengths.append(x.shape[-1])
                inject = None
                if idx < len(m.tencoder):
                    lengths_t.append(xt.shape[-1])
                    tenc = m.tencoder[idx]
                    xt = tenc(xt)
                    if not tenc.empty:
                        saved_t.append(xt)
                    else:
                        inject = xt
                x = encode(x, inject)
                if idx == 0 and m.freq_emb is not None:
                    frs = torch.arange(x.shape[-2], device=x.device)
                    emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                    x = x + m.freq_emb_scale * emb
                saved.append(x)
            if m.crosstransformer:
                if m.bottom_channels:
                    b, c, f, t = x.shape
                    x = rearrange(x, "b c f t-> b c (f t)")
                    x = m.channel_upsampler(x)
                    x = rearrange(x, "b c (f t)-> b c f t", f=f)
                    xt = m.channel_upsampler_t(xt)
                x, xt = m.crosstransformer(x, xt)
                if m.bottom_channels:
                    x = rearrange(x, "b c f t-> b c (f t)")
                    x = m.channel_downsampler(x)
                    x = rearrange(x, "b c (f t)-> b c f t", f=f)
                    xt = m.channel_downsampler_t(xt)
            for idx, decode in enumerate(m.decoder):
                skip = saved.pop(-1)
                x, pre = decode(x, skip, lengths.pop(-1))
                offset = m.depth - len(m.tdecoder)
                if idx >= offset:
                    tdec = m.tdecoder[idx - offset]
                    length_t = lengths_t.pop(-1)
                    if tdec.empty:
                        pre = pre[:, :, 0]
                        xt, _ = tdec(pre, None, length_t)
                    else:
                        skip = saved_t.pop(-1)
                        xt, _ = tdec(xt, skip, length_t)
            S = len(m.sources)
            x = x.view(B, S, -1, Fq, T)
            x = x * std[:, None] + mean[:, None]
            xt = xt.view(B, S, -1, mix.shape[-1])
            xt = xt * stdt[:, None] + meant[:, None]
            return xt, x

    return HTDemucsCore


def segment_samples(model, segment_seconds: float | None) -> int:
    trained = float(model.segment)
    seconds = trained if segment_seconds is None else float(segment_seconds)
    if not (0 < seconds <= trained + 1e-9):
        raise ExportError(f"--segment-seconds must be within (0, {trained:g}], the model's "
                          f"training segment (its transformer never saw longer inputs)")
    n = int(seconds * model.samplerate)
    if n < 4 * model.hop_length:
        raise ExportError(f"segment of {n} samples is shorter than four hops")
    return n


def export_htdemucs(checkpoint: str | Path, out: str | Path, segment_seconds: float | None = None,
                    name: str | None = None, say: Callable[[str], None] = print) -> ModelCard:
    t0 = time.perf_counter()
    from fractions import Fraction

    import onnx
    import torch

    from stemlink.engine import segments

    out = Path(out)
    model = load_htdemucs(checkpoint)
    seg = segment_samples(model, segment_seconds)
    say(f"[1/4] loaded {checkpoint} through demucs.states.load_model: "
        f"{', '.join(model.sources)}; segment {seg} samples")
    # apply_model and forward() pad every chunk to model.segment: make that the graph's
    model.segment = Fraction(seg, model.samplerate)
    c, s = model.audio_channels, list(model.sources)
    n_fft, hop = model.nfft, model.hop_length
    frames = math.ceil(seg / hop)
    bins = n_fft // 2
    graph = GraphSpec(
        file=GRAPH_FILE, frames=frames,
        inputs=[TensorSpec("mix", ["batch", c, seg], "float32"),
                TensorSpec("spec", ["batch", 2 * c, bins, frames], "float32")],
        outputs=[TensorSpec("time", ["batch", len(s), c, seg], "float32"),
                 TensorSpec("spec_out", ["batch", len(s), 2 * c, bins, frames], "float32")])
    card = ModelCard(
        name=name or f"htdemucs-{len(s)}stems",
        source={"package": "demucs", "checkpoint": str(Path(checkpoint).name),
                "sha256": sha256(Path(checkpoint)),
                "kwargs": {k: _jsonable(v) for k, v in model._init_args_kwargs[1].items()}},
        licence="demucs code MIT; weights: see their release (MUSDB-trained weights are for "
                "research use)",
        sample_rate=int(model.samplerate), channels=c, stems=s, representation="hybrid",
        n_fft=n_fft, hop=hop, window="hann", bins=bins, window_frames=frames,
        mask_extension="zeros", streaming=graph, offline=graph,
        exporter={"stemlink": __version__, "torch": torch.__version__,
                  "onnx": onnx.__version__, "opset": OPSET, "python": platform.python_version()},
        segment=seg,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out}: {e.strerror}") from None
    core = _core_class()(model).eval()
    say(f"[2/4] exporting {GRAPH_FILE}: mix [B, {c}, {seg}] + spec [B, {2 * c}, {bins}, "
        f"{frames}] -> time [B, {len(s)}, {c}, {seg}] + spec_out (STFT/iSTFT outside)")
    mix = torch.randn(1, c, seg) * 0.1
    z = torch.from_numpy(segments.demucs_spec(mix[0].numpy(), n_fft, hop)[None])
    tmp = out / (GRAPH_FILE + ".part")
    # The fused attention kernel (nn.MultiheadAttention's inference fast path) has no ONNX
    # form; with the fast path off, attention is traced as plain matmul/softmax.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(core, (mix, z), str(tmp), input_names=["mix", "spec"],
                              output_names=["time", "spec_out"],
                              dynamic_axes={k: {0: "batch"} for k in
                                            ("mix", "spec", "time", "spec_out")},
                              opset_version=OPSET, dynamo=False)
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # torch/onnx raise many types; all mean "not exportable"
            tmp.unlink(missing_ok=True)
            raise ExportError(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    tmp.replace(out / GRAPH_FILE)
    say("[3/4] verifying: full model (PyTorch) vs STFT + ONNX Runtime + iSTFT on real audio")
    worst = verify(model, card, out)
    if not worst <= TOLERANCE:
        raise ExportError(f"ONNX Runtime + numpy STFT differ from PyTorch by {worst:.2e} "
                          f"(relative to the mixture peak) > {TOLERANCE:.0e}")
    say(f"      max |ORT - PyTorch| / peak = {worst:.2e} (limit {TOLERANCE:.0e})")
    card.exporter["verified_max_rel_diff"] = float(worst)
    say(f"[4/4] writing {card.save(out)} ({time.perf_counter() - t0:.1f} s in all)")
    return card


def verify(model, card: ModelCard, folder: Path) -> float:
    """Run one segment of the example clip through the PyTorch model and through the
    engine's own segment runner (numpy STFT + ONNX Runtime + numpy iSTFT)."""
    import torch

    from stemlink import audio as aio
    from stemlink.engine.families import make_backend
    from stemlink.engine.segments import make_runner
    from stemlink.export.checkpoint import example_audio

    x, sr = aio.read_audio(example_audio())
    x = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
    seg = card.segment
    mix = np.zeros((card.channels, seg), np.float32)
    part = x[:, min(x.shape[1] // 4, max(x.shape[1] - seg, 0)):][:, :seg]
    mix[:, :part.shape[1]] = part
    with torch.no_grad():
        ref = model(torch.from_numpy(mix[None]))[0].numpy()
    be = make_backend("cpu", card, folder)
    be.activate()
    try:
        runner = make_runner(card, be)
        got = runner.run(mix)
    finally:
        be.deactivate()
    peak = max(float(np.max(np.abs(mix))), 1e-6)
    return float(np.max(np.abs(got - ref))) / peak


@contextlib.contextmanager
def _quiet():
    """torch prints the whole traced graph to stderr when an export fails: keep the one
    line the caller raises instead."""
    err = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(err, 2)
            os.close(err)


def _jsonable(v):
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)
