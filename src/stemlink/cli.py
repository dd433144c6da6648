"""The `stemlink` command. Errors the user can act on print one line and exit 2."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import click

from stemlink import progress as prog
from stemlink.errors import StemlinkError

DEFAULT_MODEL = "models/spleeter-2stems"
PRESET_NAMES = ("extreme", "ultra", "monitor", "balanced", "quality")
BACKENDS = ("cpu", "cuda", "tensorrt")


def _err(msg: str) -> None:
    click.echo(f"stemlink: error: {msg}", err=True)


def _quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bar or status line (they are drawn only on a "
                             "terminal anyway).")(f)


def _model_option(f):
    return click.option("--model", default=DEFAULT_MODEL, show_default=True,
                        type=click.Path(), help="Model folder (from `stemlink export`).")(f)


def _backend_option(f):
    return click.option("--backend", type=click.Choice(BACKENDS), default="cpu",
                        show_default=True, help="Inference backend.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stemlink")
def cli() -> None:
    """Real-time music stem separation on a LAN."""


# --------------------------------------------------------------------------- export
@cli.group()
def export() -> None:
    """Build model artefacts (ONNX graphs + model card) at set-up time."""


@export.command("spleeter")
@click.option("--out", default=DEFAULT_MODEL, show_default=True, type=click.Path(),
              help="Model folder to write.")
@click.option("--window-frames", default=64, show_default=True, type=int,
              help="W: STFT frames per streaming window (a multiple of 64).")
@_quiet_option
def export_spleeter_cmd(out: str, window_frames: int, quiet: bool) -> None:
    """Export Deezer's Spleeter 2-stems (vocals/accompaniment) to ONNX."""
    _need_engine("export spleeter")  # the export is checked with ONNX Runtime
    from stemlink.export.spleeter import export_spleeter

    on = prog.enabled(quiet)
    export_spleeter(out, window_frames, say=prog.say(on),
                    progress=prog.callback("exporting", "steps", on=on))
    click.echo(f"model ready in {out}")


# --------------------------------------------------------------------------- other families
@export.command("htdemucs")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="HTDemucs .th package (official release format) or {state, kwargs} file.")
@click.option("--segment-seconds", type=click.FloatRange(0.1, None, min_open=False),
              help="Fixed segment of the graph (default: the model's training segment).")
@click.option("--out", default="models/htdemucs", show_default=True, type=click.Path(),
              help="Model folder to write.")
def export_htdemucs_cmd(checkpoint: str, segment_seconds, out: str) -> None:
    """Export an HTDemucs checkpoint (STFT/iSTFT outside the graph) to ONNX."""
    from stemlink.export.htdemucs import export_htdemucs

    card = export_htdemucs(checkpoint, out, segment_seconds,
                           say=lambda s: click.echo(s, err=True))
    click.echo(f"model ready in {out}: {len(card.stems)} stems ({', '.join(card.stems)}), "
               f"segment {card.segment} samples")


@cli.group("import")
def import_() -> None:
    """Wrap model files made elsewhere into a stemlink model folder."""


@import_.command("mdx")
@click.argument("model_onnx", type=click.Path(dir_okay=False))
@click.option("--n-fft", required=True, type=int, help="STFT size (UVR: 6144 or 7680).")
@click.option("--dim-f", required=True, type=int, help="Frequency bins the model sees.")
@click.option("--dim-t", required=True, type=int, help="STFT frames per window.")
@click.option("--stem", required=True, help="The stem the model outputs, e.g. vocals.")
@click.option("--complement", default=None,
              help="Name of mixture-minus-stem (default: instrumental for vocals, "
                   "else no_<stem>).")
@click.option("--out", default=None, type=click.Path(), help="Model folder (default "
              "models/mdx-<stem>).")
def import_mdx_cmd(model_onnx, n_fft, dim_f, dim_t, stem, complement, out) -> None:
    """Import a UVR/MDX-Net ONNX file ([B, 4, dim_f, dim_t] in and out)."""
    from stemlink.export.mdx import import_mdx

    out = out or f"models/mdx-{stem}"
    card = import_mdx(model_onnx, out, n_fft=n_fft, dim_f=dim_f, dim_t=dim_t, stem=stem,
                      complement=complement, say=lambda s: click.echo(s, err=True))
    click.echo(f"model ready in {out}: {', '.join(card.stems)}")


@cli.group("testmodel")
def testmodel() -> None:
    """Build random-weight models of the other families (tests, benchmarks)."""


@testmodel.command("htdemucs")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".th file to write")
@click.option("--sources", default="drums,bass,other,vocals", show_default=True)
@click.option("--segment-seconds", default=1.0, show_default=True, type=float)
@click.option("--full-size", is_flag=True,
              help="The released architecture (channels 48, depth 4, 5 transformer layers).")
@click.option("--format", "fmt", type=click.Choice(["package", "state"]), default="package",
              show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
def testmodel_htdemucs(out, sources, segment_seconds, full_size, fmt, seed) -> None:
    """A randomly initialised HTDemucs checkpoint, built by the demucs package."""
    from stemlink.export.testmodels import random_htdemucs

    p = random_htdemucs(out, [s.strip() for s in sources.split(",")],
                        segment=segment_seconds, seed=seed, full_size=full_size, fmt=fmt)
    click.echo(f"wrote {p}")


@testmodel.command("mdx")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".onnx to write")
@click.option("--kind", type=click.Choice(["identity", "zeros", "gain"]), default="identity",
              show_default=True)
@click.option("--dim-f", default=2048, show_default=True, type=int)
@click.option("--dim-t", default=256, show_default=True, type=int)
def testmodel_mdx(out, kind, dim_f, dim_t) -> None:
    """An ONNX file with the MDX-Net layout: identity, zeros or 0.5 x input."""
    from stemlink.export.testmodels import mdx_onnx

    click.echo(f"wrote {mdx_onnx(out, kind, dim_f, dim_t)}")


@export.command("tensorrt")
@_model_option
@click.option("--fp16", is_flag=True, help="Build from the mixed FP16 ONNX (written and "
              "checked against FP32 on the CPU first); magnitude input and mask ratio stay FP32.")
@click.option("--batch", "batch", default="1,8,32", show_default=True,
              help="Batch sizes, one optimisation profile each.")
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(64, 1 << 20))
@click.option("--force", is_flag=True, help="Rebuild even when the plan is current.")
def export_tensorrt_cmd(model, fp16, batch, workspace_mb, force) -> None:
    """Build a TensorRT plan for this GPU (kept when current; rebuilt when stale)."""
    from stemlink.engine.trt_plan import parse_batches
    from stemlink.export.tensorrt import export_tensorrt

    batches = parse_batches(batch)
    entry = export_tensorrt(model, fp16=fp16, batches=batches, workspace_mb=workspace_mb,
                            force=force, say=lambda s: click.echo(s, err=True))
    click.echo(f"engine ready: {Path(model) / entry['file']}")


# --------------------------------------------------------------------------- separate
def _cadence_options(f):
    """Synthesis hop m and mask hold k (None = the preset's); validated by the engine."""
    f = click.option("--mask-hold", type=click.IntRange(1, 64), default=None,
                     help="k: synthesis hops one mask is applied for (one inference every "
                          "k*m samples); adds no delay.")(f)
    f = click.option("--synthesis-hop", type=click.IntRange(1, 65535), default=None,
                     help="m: synthesis hop in samples, a divisor of the model's hop "
                          ">= 128 (1024, 512, 256, 128 for Spleeter); D = 2m - 1.")(f)
    return f


def _stream_options(f):
    f = _cadence_options(f)
    f = click.option("--synthesis", type=click.Choice(["standard", "asymmetric"]),
                     help="Override the preset's synthesis mode.")(f)
    f = click.option("--lookahead", "-L", type=click.IntRange(0, None),
                     help="Override L (look-ahead frames).")(f)
    f = click.option("--hop-frames", "-H", type=click.IntRange(1, None),
                     help="Override H (frames per inference).")(f)
    f = click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
                     help="Preview what a live stream with this preset sounds like "
                          "(default: the whole-file model).")(f)
    return f


@cli.command()
@click.argument("input", type=click.Path(dir_okay=False))
@_model_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for <stem>.wav files.")
@_stream_options
@click.option("--offline", is_flag=True, hidden=True,
              help="The whole-file model (the default; kept for old scripts).")
@_backend_option
@_quiet_option
def separate(input: str, model: str, out_dir: str, preset: str | None, hop_frames, lookahead,
             synthesis, synthesis_hop, mask_hold, offline: bool, backend: str,
             quiet: bool) -> None:
    """Separate an audio file (WAV/FLAC/MP3/...) into one WAV per stem.

    By default this runs the whole-file (offline) model: the best stems there are, for
    files. Give --preset (or -H/-L/--synthesis/--synthesis-hop/--mask-hold, which start
    from `monitor`) to hear what a live stream with that preset would sound like: the
    same streaming separator the server runs, with its delay D removed from the files."""
    _need_engine("separate")
    from stemlink.separate import separate_file

    streaming = any(v is not None for v in (preset, hop_frames, lookahead, synthesis,
                                            synthesis_hop, mask_hold))
    if offline and streaming:
        raise click.UsageError("--offline and --preset/-H/-L/--synthesis exclude each other")
    r = separate_file(input, model, out_dir, preset=preset or "monitor", offline=not streaming,
                      backend=backend, hop_frames=hop_frames, lookahead=lookahead,
                      synthesis=synthesis, synthesis_hop=synthesis_hop, mask_hold=mask_hold,
                      progress=prog.callback("separating", "samples" if streaming
                                             else "segments", on=prog.enabled(quiet),
                                             scale=streaming))
    click.echo(f"{r.describe}")
    if r.nonfinite:
        click.echo(f"warning: {r.nonfinite} NaN/Inf input samples were replaced by silence",
                   err=True)
    for name, c in r.clipped.items():
        if c:
            click.echo(f"warning: {c} samples of {name} were clipped to [-1, 1]", err=True)
    secs = r.samples / r.sample_rate
    for name, path in r.files.items():
        click.echo(f"{name}: {path} ({secs:.2f} s, {r.channels} ch, {r.sample_rate} Hz)")


# --------------------------------------------------------------------------- bench
@cli.group()
def bench() -> None:
    """Benchmarks (speed is measured here, never asserted in tests)."""


@bench.command("engine")
@_model_option
@_backend_option
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1, 600),
              help="Audio streamed per preset (the example clip, repeated).")
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(5, 100000),
              help="Bare model inferences timed.")
@click.option("--audio", type=click.Path(dir_okay=False), help="Audio to stream instead.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESET_NAMES),
              help="Stream only these presets (default: all; a seconds-long model runs its "
                   "whole window once per inference, so each preset costs minutes).")
@_cadence_options
@_quiet_option
def bench_engine_cmd(model, backend, seconds, iterations, audio, json_path, presets,
                     synthesis_hop, mask_hold, quiet) -> None:
    """Compute latency per inference (p50/p99) against its period (H*k*m samples) and
    real-time factor, per preset (plus one custom cadence with --synthesis-hop/--mask-hold)."""
    from stemlink.bench.engine_bench import bench_engine, render, save

    result = bench_engine(model, backend, seconds, audio, iterations, list(presets) or None,
                          prog.callback("bench engine", "steps", on=prog.enabled(quiet)),
                          synthesis_hop, mask_hold)
    result["command"] = "stemlink " + " ".join(sys.argv[1:])
    click.echo(render(result))
    if json_path:
        save(result, json_path)
        click.echo(f"JSON: {json_path}")


@bench.command("fidelity")
@_model_option
@click.option("--audio", type=click.Path(dir_okay=False),
              help="Audio to use (default: the bundled example).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
@click.option("--grid", is_flag=True,
              help="The synthesis hop x mask hold grid, on the audio and a generated song.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes for --grid (one ONNX Runtime thread each when > 1).")
@_quiet_option
def bench_fidelity_cmd(model, audio, json_path, grid, jobs, quiet) -> None:
    """SDR of streamed stems vs the offline model, per preset (or per (m, k) with --grid)."""
    from stemlink.bench.fidelity import (
        bench_fidelity,
        bench_fidelity_grid,
        render,
        render_grid,
        save,
    )

    if grid:
        r = bench_fidelity_grid(model, audio, jobs=jobs, say=lambda s: click.echo(s, err=True))
        click.echo(render_grid(r))
    else:
        r = bench_fidelity(model, audio,
                           prog.callback("bench fidelity", "runs", on=prog.enabled(quiet)))
        click.echo(render(r))
    if json_path:
        save(r, json_path)


@bench.command("latency")
@_model_option
@click.option("--against", type=click.Choice(["baseline"]), default=None,
              help="Also measure the blueprint's WebSocket design.")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(2, 3600))
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--profile", type=click.Choice(["wired", "wifi", "stress"]), default=None,
              help="Run both systems through `stemlink relay` with this profile (UDP for "
                   "stemlink, its TCP mode for the WebSocket baseline).")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Relay seed (with --profile).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@_cadence_options
@_backend_option
@click.option("--out", "out_dir", default="out/bench-latency", show_default=True,
              type=click.Path(file_okay=False))
@_quiet_option
def bench_latency_cmd(model, against, seconds, clients, profile, seed, preset, synthesis_hop,
                      mask_hold, backend, out_dir, quiet) -> None:
    """End-to-end latency (client clock), compute, CPU and bytes: stemlink vs baseline."""
    from stemlink.bench.latency import PNG, bench_latency, render

    r = bench_latency(model, against, seconds, clients, profile, preset, backend,
                      Path(out_dir), seed, bars=prog.enabled(quiet),
                      synthesis_hop=synthesis_hop, mask_hold=mask_hold)
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


@bench.command("capacity")
@_model_option
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(BACKENDS),
              help="Backend(s) to measure (default: every available one).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@_cadence_options
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(2, 600),
              help="Audio per step.")
@click.option("--max-clients", default=16, show_default=True, type=click.IntRange(1, 256))
@click.option("--workers", "workers", multiple=True, type=click.IntRange(1, 16),
              help="Server worker threads (repeatable: one ramp each; default 1).")
@click.option("--batch", type=click.IntRange(1, 64), default=None,
              help="The server's --batch (default: the backend's).")
@click.option("--batch-delay-us", type=click.FloatRange(0, 100000), default=None,
              help="The server's --batch-delay-us (default: the backend's).")
@click.option("--clients", "counts", default=None, metavar="N1,N2,...",
              help="Run exactly these client counts, each whatever the misses before "
                   "(e.g. 1,2,4,8,16,32,64), instead of ramping 1, 2, 3, ... up to the "
                   "first miss.")
@click.option("--out", "out_dir", default="out/bench-capacity", show_default=True,
              type=click.Path(file_okay=False))
@_quiet_option
def bench_capacity_cmd(model, backends, preset, synthesis_hop, mask_hold, seconds,
                       max_clients, workers, batch, batch_delay_us, counts, out_dir,
                       quiet) -> None:
    """Concurrent real-time sessions with zero missed deadlines (ramped up)."""
    from stemlink.bench.capacity import available_backends, bench_capacity, render

    if counts is not None:
        raw = counts
        try:
            counts = sorted({int(c) for c in raw.split(",")})
        except ValueError:
            counts = []
        if not counts or counts[0] < 1 or counts[-1] > 256:
            _err(f"--clients: want client counts between 1 and 256 like 1,2,4,8 (got {raw!r})")
            sys.exit(2)
        max_clients = counts[-1]

    r = bench_capacity(model, list(backends) or available_backends(), preset, seconds,
                       max_clients, Path(out_dir), synthesis_hop, mask_hold,
                       prog.callback("bench capacity", "steps", on=prog.enabled(quiet)),
                       workers=tuple(workers) or (1,), batch=batch,
                       batch_delay_us=batch_delay_us, counts=counts)
    click.echo(render(r))


@bench.command("pipeline")
@_model_option
@click.option("--blocks", default=4000, show_default=True, type=click.IntRange(100, 10**6),
              help="Input blocks per run.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--out", "out_dir", default="out/bench-pipeline", show_default=True,
              type=click.Path(file_okay=False))
def bench_pipeline_cmd(model, blocks, repeats, out_dir) -> None:
    """Server CPU per input block outside the model (datagrams, scheduling, STFT, masks,
    iSTFT, stems out): what a GPU leaves on the CPU, per session."""
    from stemlink.bench.pipeline import bench_pipeline, render, save

    r = bench_pipeline(model, blocks, repeats)
    save(r, Path(out_dir))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/pipeline.json, {out_dir}/pipeline.md")


@bench.command("frontend")
@click.option("--iterations", default=20000, show_default=True, type=click.IntRange(100, 10**7),
              help="Calls per timed repeat.")
@click.option("--repeats", default=7, show_default=True, type=click.IntRange(1, 100))
@click.option("--out", "out_dir", default="out/bench-frontend", show_default=True,
              type=click.Path(file_okay=False))
def bench_frontend_cmd(iterations, repeats, out_dir) -> None:
    """Python µs per AUDIO datagram in and per STEM datagram out; sessions per core."""
    from stemlink.bench.frontend import bench_frontend, render, save

    r = bench_frontend(iterations, repeats)
    save(r, Path(out_dir))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/frontend.json, {out_dir}/frontend.md")


@bench.command("int8")
@_model_option
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(2, 60),
              help="Audio per song (the example and a synthetic song).")
@click.option("--iterations", default=30, show_default=True, type=click.IntRange(5, 10000),
              help="Timed inferences per variant (interleaved).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]),
              default="percentile", show_default=True, help="Calibration method.")
@click.option("--out", "out_dir", default="out/bench-int8", show_default=True,
              type=click.Path(file_okay=False))
def bench_int8_cmd(model, seconds, iterations, method, out_dir) -> None:
    """Static int8 (QDQ) vs FP32 on this CPU: speed and fidelity; keep or drop."""
    from stemlink.bench.int8_bench import bench_int8, render, save

    r = bench_int8(model, seconds, iterations, method)
    save(r, Path(out_dir))
    click.echo(render(r))


@bench.command("gpu")
@_model_option
@click.option("--batch", "batch", default="1,8,32,64,128,256", show_default=True,
              help="Batch sizes to time.")
@click.option("--iterations", default=200, show_default=True, type=click.IntRange(5, 100000))
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(2, 600),
              help="Audio per capacity step and per SDR song.")
@click.option("--max-clients", default=128, show_default=True, type=click.IntRange(1, 1024))
@click.option("--no-capacity", is_flag=True, help="Skip the capacity ramp.")
@click.option("--out", "out_dir", default="out/bench-gpu", show_default=True,
              type=click.Path(file_okay=False))
def bench_gpu_cmd(model, batch, iterations, seconds, max_clients, no_capacity, out_dir) -> None:
    """Every GPU figure: compute per window by backend and batch, capacity, GPU vs CPU
    SDR (FP32, FP16). Exits 2 with one line on a host without a GPU."""
    from stemlink.bench.gpu_bench import bench_gpu, render
    from stemlink.engine.cudart import gpu_present
    from stemlink.engine.trt_plan import parse_batches

    batches = parse_batches(batch)
    reason = gpu_present()
    if reason:
        _err(f"bench gpu needs an NVIDIA GPU: {reason}")
        sys.exit(2)
    r = bench_gpu(model, batches, iterations, seconds, max_clients, not no_capacity,
                  Path(out_dir))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/gpu.json, {out_dir}/gpu.md")


@bench.command("fuzz")
@_model_option
@click.option("--datagrams", default=1_000_000, show_default=True,
              type=click.IntRange(1000, 10**9), help="Datagrams the server must receive.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append progress lines here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
def bench_fuzz_cmd(model, datagrams, seed, log_path, json_path) -> None:
    """Mutated valid packets (and garbage) against a live server; then a real session."""
    import json

    from stemlink.bench.fuzz import fuzz, render

    _need_engine("bench fuzz")
    r = fuzz(model, datagrams, seed, log_path)
    click.echo(render(r))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(r, indent=2) + "\n")
    if r["crashes"] or r["internal_errors"] or r["after"]["lost"]:
        raise StemlinkError("the server did not come through the fuzz intact")


@bench.command("soak")
@_model_option
@click.option("--clients", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.1, 1440))
@click.option("--clip-seconds", default=30.0, show_default=True,
              type=click.FloatRange(1, 600), help="Length of each session's clip.")
@click.option("--every", default=10.0, show_default=True, type=click.FloatRange(0.5, 600),
              help="Seconds between samples of RSS and sessions.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
def bench_soak_cmd(model, clients, minutes, clip_seconds, every, json_path) -> None:
    """N real-time clients for many minutes, session after session; RSS and sessions sampled."""
    from stemlink.bench.soak import render, save, soak

    _need_engine("bench soak")
    r = soak(model, clients, minutes, clip_seconds, every,
             say=lambda m: click.echo(m, err=True))
    click.echo(render(r))
    if json_path:
        save(r, json_path)


@bench.command("security")
@_model_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
def bench_security_cmd(model, json_path) -> None:
    """Attacks on a live keyed server: amplification, forgeries and replays per packet type,
    a flood from one address while another connects, input beyond the rate bound."""
    import json

    from stemlink.bench.security import bench_security, render

    _need_engine("bench security")
    r = bench_security(model)
    click.echo(render(r))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(r, indent=2) + "\n")


@bench.command("aead")
@click.option("--packets", default=20000, show_default=True, type=click.IntRange(100, 10**7))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
def bench_aead_cmd(packets, json_path) -> None:
    """Cost of --encrypt (ChaCha20-Poly1305) per packet against the BLAKE2s tag (run it
    under the shared benchmark lock)."""
    import json

    from stemlink.bench.aead import bench_aead, render
    from stemlink.wire.auth import aead_available

    if not aead_available():
        raise StemlinkError("bench aead needs the `cryptography` package")
    r = bench_aead(packets)
    click.echo(render(r))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(r, indent=2) + "\n")


# --------------------------------------------------------------------------- bench live
@bench.command("live")
@_model_option
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESET_NAMES),
              help="Preset(s) to measure (repeatable; default: ultra and monitor).")
@click.option("--rate", "rates", multiple=True, type=click.IntRange(8000, 192000),
              help="JACK device rate(s) in Hz (repeatable; default 44100; 48000 exercises "
                   "live's resampler).")
@click.option("--profile", "profiles", multiple=True,
              type=click.Choice(["loopback", "wired", "wifi"]),
              help="Network between live and the server: plain loopback or a `stemlink "
                   "relay` profile (repeatable; default loopback).")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(2, 600),
              help="Song length played through live per run.")
@click.option("--audio", type=click.Path(dir_okay=False),
              help="Song to play (default: the bundled example, looped).")
@click.option("--monitor", default="accompaniment", show_default=True,
              help="What live plays back (a stem or a mix such as vocals=1,accompaniment=1).")
@click.option("--jitter", default=None,
              help="live's jitter buffer: auto or MS (default: live's own default).")
@click.option("--jack-server", default=None,
              help="Reuse this running JACK server (by name) instead of starting a dummy one.")
@click.option("--jack-sync/--jack-async", default=True, show_default=True,
              help="Dummy JACK server in sync mode (waits for late clients; xruns still "
                   "counted) or JACK2's default async mode.")
@click.option("--jack-realtime/--jack-no-realtime", default=True, show_default=True,
              help="Run the dummy JACK server with realtime scheduling (falls back to "
                   "--no-realtime where refused).")
@_backend_option
@click.option("--seed", default=1, show_default=True, type=int, help="Relay seed.")
@click.option("--keep-audio", is_flag=True,
              help="Also write what live played and what the file path expects, as WAVs.")
@click.option("--out", "out_dir", default="out/bench-live", show_default=True,
              type=click.Path(file_okay=False))
def bench_live_cmd(model, presets, rates, profiles, seconds, audio, monitor, jitter,
                   jack_server, jack_sync, jack_realtime, backend, seed, keep_audio,
                   out_dir) -> None:
    """`live` through a real audio stack (JACK dummy driver): true input-to-output latency,
    xruns, underruns, SDR against the file path, client CPU."""
    from stemlink.bench.live_bench import PNG, bench_live, render

    r = bench_live(model, list(presets) or ["ultra", "monitor"], list(rates) or [44100],
                   list(profiles) or ["loopback"], seconds, audio, monitor, jitter,
                   jack_server, backend, Path(out_dir), seed, realtime=jack_realtime,
                   sync=jack_sync, keep_audio=keep_audio)
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


# --------------------------------------------------------------------------- network
def _psk_option(f):
    f = click.option("--psk", envvar="STEMLINK_PSK", default="", show_default=False,
                     help="Passphrase (or $STEMLINK_PSK), stretched with scrypt; prefer "
                          "--key-file.")(f)
    return click.option("--key-file", envvar="STEMLINK_KEY_FILE", default=None,
                        type=click.Path(dir_okay=False),
                        help="Key file from `stemlink keygen` (or $STEMLINK_KEY_FILE); the "
                             "same file on server and clients.")(f)


def _encrypt_option(f):
    return click.option("--encrypt", is_flag=True,
                        help="Encrypt every payload (ChaCha20-Poly1305; needs the "
                             "`cryptography` package).")(f)


def _key(key_file: str | None, psk: str) -> tuple[bytes, bytes]:
    """(key, passphrase) from the options; AuthError (one line) on a bad key file."""
    from stemlink.wire.keys import load_key_file

    if key_file and psk:
        raise StemlinkError("give --key-file or --psk, not both")
    return (load_key_file(key_file) if key_file else b""), psk.encode()


def _need_engine(command: str) -> None:
    """The engine needs ONNX Runtime, an extra: say which one instead of a traceback."""
    import importlib.util

    try:
        found = importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise StemlinkError(
            f"`stemlink {command}` needs ONNX Runtime, which this install lacks (the base "
            "install is the client): pip install 'stemlink[server]' (CPU) or "
            "'stemlink[gpu]' (NVIDIA GPU)")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file.")
def keygen(path: str, force: bool) -> None:
    """Write a random 256-bit key to PATH (mode 0600) for --key-file."""
    from stemlink.wire.keys import generate_key_file

    generate_key_file(path, force=force)
    click.echo(f"wrote a new key to {path} (mode 0600); copy it to each client over a "
               f"secure channel and pass --key-file {path} to serve, send and live")


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")


@cli.command()
@_model_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5005, show_default=True, type=click.IntRange(0, 65535))
@_backend_option
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True,
              help="Preset for clients that do not ask for one.")
@_cadence_options
@click.option("--max-sessions", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--idle-timeout", default=10.0, show_default=True,
              type=click.FloatRange(0.5, 3600), help="Seconds of silence that end a session.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--compute-stats", type=click.Path(dir_okay=False), hidden=True,
              help="Write per-block compute times as JSON at exit (used by benchmarks).")
@click.option("--reorder-ms", default=10.0, show_default=True, type=click.FloatRange(0, 200),
              help="Input reorder window: how long a missing AUDIO block is waited for "
                   "before it is concealed (the most delay it adds to the blocks behind "
                   "it; stated to clients).")
@click.option("--playout-ms", default=200.0, show_default=True,
              type=click.FloatRange(1, 10000),
              help="Playout budget for clients that state none: output later than this "
                   "is not computed or sent.")
@click.option("--status-interval", default=10.0, show_default=True,
              type=click.FloatRange(0, 3600),
              help="Seconds between status log lines (sessions, datagrams/s, worker load, "
                   "drops); 0 = none. An idle server prints none.")
@_psk_option
@click.option("--insecure", is_flag=True,
              help="Serve on a non-loopback address without a key (warns loudly).")
@click.option("--encrypt", is_flag=True,
              help="Require encryption (ChaCha20-Poly1305) from every client.")
@click.option("--sessions-per-address", default=4, show_default=True,
              type=click.IntRange(1, 1024), help="Sessions one source IP may hold.")
@click.option("--handshake-rate", default=4.0, show_default=True,
              type=click.FloatRange(0.01, 10000), help="HELLOs per second per source IP.")
@click.option("--handshake-burst", default=16, show_default=True,
              type=click.IntRange(1, 100000), help="HELLOs per source IP at once.")
@click.option("--input-factor", default=2.0, show_default=True,
              type=click.FloatRange(1.01, 1000),
              help="Drop a real-time session's packets beyond this x its audio rate.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus /metrics and /healthz on this TCP port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address for --metrics-port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Separation threads, each with its own backend (CPU: the cores are "
                   "split among them); a session stays on one.")
@click.option("--batch", type=click.IntRange(1, 64), default=None,
              help="Windows (one per session) per inference; each costs the backend "
                   "memory (~26 MB with ONNX Runtime on CPU)  [default: 1 on cpu, 32 on "
                   "cuda/tensorrt]")
@click.option("--batch-delay-us", type=click.FloatRange(0, 100000), default=None,
              help="How long a partial batch may wait for more sessions' windows  "
                   "[default: 0 on cpu, 300 on cuda/tensorrt]")
def serve(model, host, port, backend, preset, synthesis_hop, mask_hold, max_sessions,
          idle_timeout, log_level, compute_stats, reorder_ms, playout_ms, status_interval,
          psk, key_file, insecure,
          encrypt, sessions_per_address, handshake_rate, handshake_burst, input_factor,
          metrics_port, metrics_host, workers, batch, batch_delay_us) -> None:
    """Run the UDP separation server (SIGINT/SIGTERM stop it cleanly)."""
    key, passphrase = _key(key_file, psk)
    _need_engine("serve")
    from stemlink.loop import run_loop
    from stemlink.udp_server.limits import LimitConfig
    from stemlink.udp_server.server import ServeOptions, Server

    _setup_logging(log_level)
    limits = LimitConfig(max_sessions=max_sessions, sessions_per_address=sessions_per_address,
                         handshake_rate=handshake_rate, handshake_burst=handshake_burst,
                         input_factor=input_factor)
    try:
        srv = Server(ServeOptions(model, host, port, backend, preset, max_sessions,
                                  idle_timeout, passphrase, compute_stats, key=key,
                                  insecure=insecure, encrypt=encrypt, limits=limits,
                                  metrics_port=metrics_port, metrics_host=metrics_host,
                                  reorder_ms=reorder_ms, playout_ms=playout_ms,
                                  status_interval=status_interval,
                                  synthesis_hop=synthesis_hop, mask_hold=mask_hold,
                                  workers=workers, batch=batch,
                                  batch_delay_us=batch_delay_us))
    except OSError as e:
        raise StemlinkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    for line in srv.warnings():
        click.echo(line, err=True)
    click.echo(srv.describe(), err=True)
    run_loop(srv.run(install_signals=True))


class _JitterParam(click.ParamType):
    """`auto` (adaptive playout buffer) or a fixed size in milliseconds."""

    name = "auto|MS"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, float)):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            ms = float(value)
        except ValueError:
            self.fail(f"{value!r}: use auto or a number of milliseconds", param, ctx)
        if not 0 < ms <= 2000:
            self.fail(f"{value!r}: the buffer must be within (0, 2000] ms", param, ctx)
        return ms


_JITTER = _JitterParam()


def _conceal_option(f):
    from stemlink.conceal import DEFAULT_METHOD, METHODS

    return click.option("--conceal", type=click.Choice(METHODS), default=DEFAULT_METHOD,
                        show_default=True,
                        help="How missing stem blocks are filled: faded zero-fill, repeat "
                             "with cross-fade, pitch-period overlap-add, Burg LPC, or "
                             "waveform matching (interpolates when the next block is "
                             "here).")(f)


def _redundancy_option(f):
    return click.option("--redundancy", is_flag=True,
                        help="Ask for XOR parity both ways: every audio block covered "
                             "twice (+100 % bytes up), pairs of stem blocks (+50 % down). "
                             "Any single loss is repaired exactly, and every double loss "
                             "of your audio.")(f)


class _StatusLine:
    """`send`'s status line on stdout: rewritten in place once a second, on a terminal
    only, and ended with a newline before the summary."""

    def __init__(self, quiet: bool) -> None:
        self.on = not quiet and sys.stdout.isatty()
        self.shown = False

    def show(self, p) -> None:
        # a line wider than the terminal would wrap, and \r would then rewrite only its
        # last row: cut it to the width; ESC[K erases the old line's tail
        width = shutil.get_terminal_size().columns - 1
        click.echo(f"\r{p.line()[:width]}\x1b[K", nl=False)
        self.shown = True

    def end(self) -> None:
        if self.shown:
            click.echo()


@cli.command()
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("--server", default="127.0.0.1:5005", show_default=True, help="HOST:PORT")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Ask for this preset (default: the server's).")
@click.option("--realtime/--as-fast-as-possible", default=True, show_default=True)
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False),
              help="Write the measurements as JSON.")
@click.option("--jitter-ms", default=60.0, show_default=True, type=click.FloatRange(0, 5000),
              help="Playout budget: stem blocks arriving later count as late.")
@click.option("--block", default=256, show_default=True, type=click.Choice(["64", "128", "256"]))
@click.option("--synthesis", type=click.Choice(["standard", "asymmetric"]),
              help="Override the preset's synthesis mode for this session.")
@_cadence_options
@click.option("--as-heard", is_flag=True,
              help="Write what a live listener would have heard: blocks later than the "
                   "playout buffer (--jitter) are concealed, not written late. Default: "
                   "archival, every block that arrives is written.")
@click.option("--jitter", "jitter", default="auto", show_default=True, type=_JITTER,
              help="--as-heard playout buffer: auto (adaptive) or a fixed size in ms.")
@_conceal_option
@_redundancy_option
@_psk_option
@_encrypt_option
@_quiet_option
def send(input, server, out_dir, preset, realtime, stats_path, jitter_ms, block, synthesis,
         as_heard, jitter, conceal, redundancy, synthesis_hop, mask_hold, psk, key_file,
         encrypt, quiet) -> None:
    """Stream a file to a server; write the stems it sends back.

    On a terminal a status line updates once a second: elapsed/total, packets sent,
    received, lost, late, concealed, RTT and end-to-end latency p50/p99 so far."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, save_stats, send_file
    from stemlink.udp_client.transport import parse_server

    if as_heard and not realtime:
        raise click.UsageError("--as-heard needs real-time pacing (drop "
                               "--as-fast-as-possible)")
    given = click.get_current_context().get_parameter_source("jitter")
    if not as_heard and given is not click.core.ParameterSource.DEFAULT:
        _err("--jitter sizes the --as-heard playout buffer; without --as-heard every block "
             "is written (--jitter-ms is the budget that counts blocks as late)")
        sys.exit(2)
    key, passphrase = _key(key_file, psk)
    line = _StatusLine(quiet)
    opts = SendOptions(input, parse_server(server), out_dir, preset=preset, realtime=realtime,
                       jitter_ms=jitter_ms, block=int(block), psk=passphrase,
                       synthesis=synthesis, as_heard=as_heard, jitter=jitter,
                       conceal=conceal, redundancy=redundancy, key=key, encrypt=encrypt,
                       synthesis_hop=synthesis_hop, mask_hold=mask_hold,
                       on_status=line.show if line.on else None)
    try:
        rep = run_loop(send_file(opts))
    finally:
        line.end()
    click.echo(rep.summary() if realtime else rep.summary().replace(
        "end-to-end latency", "(not paced in real time) end-to-end latency"))
    for name, path in rep.files.items():
        click.echo(f"{name}: {path}")
    if stats_path:
        save_stats(rep, stats_path)


@cli.command()
@click.option("--server", default="127.0.0.1:5005", show_default=True, help="HOST:PORT")
@click.option("--input-device", default=None,
              help="Input device: an index or a name as `stemlink devices` prints it.")
@click.option("--output-device", default=None,
              help="Output device: an index or a name as `stemlink devices` prints it.")
@click.option("--monitor", default=None,
              help="Stem to hear, a mix (drums=0,vocals=1,bass=0.5: unnamed stems are "
                   "muted) or 'all'. Default: accompaniment, or every stem but vocals.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None)
@click.option("--jitter", "jitter", default="auto", show_default=True, type=_JITTER,
              help="Playout buffer: auto (adaptive: grows at once after an underrun, "
                   "shrinks slowly when clean) or a fixed size in ms. It must cover the "
                   "server's inference time, ~25 ms on a 2-core CPU.")
@click.option("--jitter-blocks", type=click.IntRange(1, 60), default=None, hidden=True,
              help="Deprecated: a fixed buffer of this many blocks; use --jitter MS.")
@click.option("--block", default=256, show_default=True, type=click.Choice(["64", "128", "256"]))
@click.option("--seconds", type=click.FloatRange(0.5, None), default=None,
              help="Stop after this long (default: run until Ctrl-C or SIGTERM).")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False),
              help="Write the stats (xruns, underruns, concealed blocks, the stated latency) "
                   "as JSON.")
@_conceal_option
@_redundancy_option
@_cadence_options
@_psk_option
@_encrypt_option
def live(server, input_device, output_device, monitor, preset, jitter, jitter_blocks, block,
         seconds, stats_path, conceal, redundancy, synthesis_hop, mask_hold, psk, key_file,
         encrypt) -> None:
    """Sound card -> server -> headphones, headless; Ctrl-C or SIGTERM exits."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.devices import parse_device as dev
    from stemlink.udp_client.live import run_live, save_stats
    from stemlink.udp_client.transport import parse_server

    if jitter_blocks is not None:
        jitter = 1000.0 * jitter_blocks * int(block) / 44100
    key, passphrase = _key(key_file, psk)
    try:
        stats = run_loop(run_live(parse_server(server), dev(input_device),
                                  dev(output_device), monitor, preset, passphrase, jitter,
                                  int(block), seconds, conceal=conceal, redundancy=redundancy,
                                  key=key, encrypt=encrypt, synthesis_hop=synthesis_hop,
                                  mask_hold=mask_hold))
        js = stats["jitter"]
        click.echo(f"playout ({js['mode']}): {js['pushed']} stem blocks, concealed "
                   f"{js['concealed']}, late {js['late']}, inserted {js['inserted']}, mean "
                   f"buffer {js['mean_delay_ms']:.1f} ms; repaired {stats['repaired']}; "
                   f"capture overruns {stats['capture_overruns']} (gaps "
                   f"{stats['capture_gaps']}), playback underruns "
                   f"{stats['playback_underruns']}; client CPU {stats['cpu_percent']:.1f} % "
                   f"of a core; stated end-to-end latency {stats['stated_latency_ms']:.1f} ms")
        lat = stats["latency"]
        over = lat.get("over_time", {}).get("total_ms") or []
        if over:
            from stemlink.percentiles import summarize

            q = summarize(over, (1, 50, 99))
            every = 1000 * lat["over_time"]["every_frames"] / lat["device_rate"]
            click.echo(f"input-to-output latency over the run (device clock, every "
                       f"{every:.0f} ms): p50 {q['p50']:.1f} ms, p1 {q['p1']:.1f}, "
                       f"p99 {q['p99']:.1f}")
        xr = stats["xruns"]
        click.echo("device xruns: " + ", ".join(f"{k} {v}" for k, v in xr.items()))
        if stats_path:
            save_stats(stats, stats_path)
    except KeyboardInterrupt:
        click.echo("live: stopped", err=True)


# --------------------------------------------------------------------------- relay
class _PerDirection(click.ParamType):
    """VALUE for both directions, or up:VALUE / down:VALUE for one."""

    name = "[up:|down:]VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        where, _, num = str(value).rpartition(":")
        where = where.lower()
        if where not in ("", "up", "down"):
            self.fail(f"{value!r}: the prefix must be up: or down:", param, ctx)
        try:
            v = float(num)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        return (where or "both", v)


def _per_direction(values) -> dict | None:
    """Later values win; `both` sets both directions."""
    if not values:
        return None
    out: dict = {}
    for where, v in values:
        for d in (("up", "down") if where == "both" else (where,)):
            out[d] = v
    return out


def _relay_knobs(f):
    knobs = [
        ("--duplicate", "probability of sending a datagram twice"),
        ("--reorder", "probability of swapping a datagram with the next one (adjacent swap)"),
        ("--delay-ms", "fixed one-way delay, ms"),
        ("--jitter-ms", "cap of the heavy-tailed (Lomax) extra delay, ms; FIFO, never "
                        "reorders"),
        ("--burst", "mean loss-burst length in datagrams (1 = independent losses)"),
        ("--loss", "stationary loss rate of the Gilbert-Elliott model (0.05 = 5 %)"),
    ]
    for flag, text in knobs:
        f = click.option(flag, type=_PerDirection(), multiple=True, help=text)(f)
    f = click.option("--profile", type=click.Choice(["wired", "wifi", "stress"]),
                     help="wired: jitter <= 0.3 ms; wifi: 2 % loss in bursts of 3, jitter "
                          "<= 3 ms, 0.5 % reorder; stress: 10 % loss in bursts of 2, jitter "
                          "<= 5 ms, 1 % reorder, 0.5 % duplicates. Flags override it.")(f)
    return f


def _relay_config(profile, loss, burst, jitter_ms, delay_ms, reorder, duplicate, outage,
                  seed):
    from stemlink.bench.relay import make_config

    return make_config(profile, seed, outage, loss=_per_direction(loss),
                       burst=_per_direction(burst), jitter_ms=_per_direction(jitter_ms),
                       delay_ms=_per_direction(delay_ms), reorder=_per_direction(reorder),
                       duplicate=_per_direction(duplicate))


@cli.command()
@click.option("--listen", required=True, help="HOST:PORT clients send to (port 0: any).")
@click.option("--to", "to", required=True, help="HOST:PORT of the server.")
@_relay_knobs
@click.option("--outage", type=(float, float), multiple=True, metavar="START_S LEN_S",
              help="Drop everything, both directions, from START_S after the first "
                   "datagram for LEN_S seconds (a Wi-Fi dropout). Repeatable.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Write one line per datagram: seconds, direction, bytes, action.")
@click.option("--seconds", type=click.FloatRange(0.1, None), default=None,
              help="Stop after this long (default: until SIGINT/SIGTERM).")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False),
              help="Write the summary as JSON at exit (used by benchmarks).")
@click.option("--tcp", is_flag=True,
              help="Relay TCP connections instead (for the WebSocket baseline): the same "
                   "link per MSS-sized segment; a lost segment is retransmitted (fast "
                   "retransmit / tail-loss probe, or the >= 200 ms RTO) and everything "
                   "behind it waits. Reorder and duplicate do not apply.")
@click.option("--tcp-recovery", type=click.Choice(["linux", "rto"]), default="linux",
              show_default=True,
              help="linux: fast retransmit after 3 later segments or a tail-loss probe, the "
                   "RTO for lost retransmissions; rto: every loss waits for the RTO.")
def relay(listen, to, profile, loss, burst, jitter_ms, delay_ms, reorder, duplicate, outage,
          seed, log_path, seconds, stats_path, tcp, tcp_recovery) -> None:
    """Seeded impairment relay for UDP (loss in Gilbert-Elliott bursts, jitter,
    reordering, duplication, dropouts) between clients and a server.

    Directions: up = client to server, down = server to client. Every knob takes VALUE
    (both directions) or up:VALUE / down:VALUE (one direction) and may be repeated; later
    values win, e.g. `--loss 0.02 --loss down:0.1`. Runs are deterministic for a --seed
    given the same arrival order. Prints a summary per direction at exit.
    """
    from stemlink.bench.relay import parse_host_port, run_relay

    cfg = _relay_config(profile, loss, burst, jitter_ms, delay_ms, reorder, duplicate,
                        outage, seed)
    target = parse_host_port(to, "--to")
    try:  # one line now, not a relay that forwards into nothing
        socket.getaddrinfo(target[0], target[1], type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        _err(f"--to {to}: cannot resolve {target[0]}: {e.strerror or e}")
        sys.exit(2)
    run_relay(cfg, parse_host_port(listen, "--listen"), target,
              log_path, seconds, lambda s: click.echo(s, err=True), stats_path, tcp,
              tcp_recovery)


@bench.command("network")
@_model_option
@_backend_option
@click.option("--audio", type=click.Path(dir_okay=False),
              help="Song to stream (default: the bundled example; see `bench make-song`).")
@click.option("--seconds", type=click.FloatRange(2, 3600), default=None,
              help="Loop or cut the song to this length (default: as it is).")
@click.option("--profile", "profiles", multiple=True,
              type=click.Choice(["wired", "wifi", "stress"]), help="One run per profile.")
@click.option("--relay", "specs", multiple=True, metavar="'RELAY FLAGS'",
              help="One run with these `stemlink relay` flags, e.g. --relay '--reorder 0.02'.")
@click.option("--loss", "losses", multiple=True, type=click.FloatRange(0, 0.99),
              help="One run per loss rate (both directions).")
@click.option("--burst", default=1.0, show_default=True, type=click.FloatRange(1, None),
              help="Mean loss-burst length for the --loss runs (1 = independent).")
@click.option("--outage", "outages", type=(float, float), multiple=True,
              metavar="START_S LEN_S", help="One run per dropout (both directions); SDR is "
                                            "also measured from 2 s after it ends.")
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 2),
              help="2: the second client goes straight to the server, beside the first.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Relay seed.")
@click.option("--sdr-from", "sdr_from", type=click.FloatRange(0, None), default=None,
              help="Also measure SDR from this second on (runs other than dropouts).")
@click.option("--send-opt", "send_opts", multiple=True, metavar="KEY=VALUE",
              help="Pass an option to every `send` client (a SendOptions field, e.g. "
                   "jitter_ms=80). Repeatable.")
@click.option("--conceal-sweep", "sweep", default=None, metavar="M1,M2,...",
              help="Also replay each impaired run's arrivals under these concealment "
                   "methods (or 'all'), archival and as-heard: loss.md and loss.png.")
@click.option("--realtime/--as-fast-as-possible", default=True, show_default=True,
              help="Unpaced: the server is never overloaded and the relay decides the "
                   "same losses whatever the machine's load (archival mode only).")
@click.option("--compare-redundancy", is_flag=True,
              help="Run every impaired setting twice: without and with --redundancy.")
@click.option("--out", "out_dir", default="out/bench-network", show_default=True,
              type=click.Path(file_okay=False))
@_quiet_option
def bench_network_cmd(model, backend, audio, seconds, profiles, specs, losses, burst, outages,
                      clients, preset, seed, sdr_from, send_opts, realtime, sweep,
                      compare_redundancy, out_dir, quiet) -> None:
    """The server through the impairment relay: lost/late/concealed blocks, end-to-end
    latency, SDR against an undisturbed run, server CPU and counters, per run."""
    import shlex

    from stemlink.bench.network import PNG, bench_network, parse_send_opts, render

    for sp in specs:  # check relay flags here, so that a typo fails before any run
        try:
            ctx = relay.make_context("relay", ["--listen", "127.0.0.1:0", "--to",
                                               "127.0.0.1:1", *shlex.split(sp)])
        except click.exceptions.ClickException as e:
            raise StemlinkError(f"--relay {sp!r}: {e.format_message()}") from None
        p = ctx.params
        try:
            _relay_config(p["profile"], p["loss"], p["burst"], p["jitter_ms"], p["delay_ms"],
                          p["reorder"], p["duplicate"], p["outage"], p["seed"])
        except StemlinkError as e:
            raise StemlinkError(f"--relay {sp!r}: {e}") from None
    if not (profiles or specs or losses or outages):
        raise StemlinkError("nothing to compare with the reference: give --profile, "
                            "--relay, --loss or --outage")
    methods = None
    if sweep:
        from stemlink.conceal import METHODS

        methods = list(METHODS) if sweep == "all" else [m.strip() for m in sweep.split(",")]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise StemlinkError(f"--conceal-sweep: unknown method(s) {', '.join(bad)}; "
                                f"known: {', '.join(METHODS)}")
    click.echo("command: stemlink " + shlex.join(sys.argv[1:]), err=True)
    r = bench_network(model, audio, seconds, list(profiles), list(specs), list(losses), burst,
                      list(outages), clients, preset, backend, seed, sdr_from,
                      parse_send_opts(list(send_opts)), Path(out_dir),
                      say=prog.say(prog.enabled(quiet)), sweep=methods,
                      compare_redundancy=compare_redundancy, realtime=realtime,
                      progress=prog.callback("bench network", "runs", on=prog.enabled(quiet)))
    click.echo(render(r))
    if methods:
        from stemlink.bench.network import render_sweep

        click.echo("\n" + render_sweep(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


@bench.command("relay")
@click.option("--datagrams", default=200_000, show_default=True,
              type=click.IntRange(1000, 10_000_000), help="Datagrams per profile.")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--out", "out_dir", default="out/bench-relay", show_default=True,
              type=click.Path(file_okay=False))
@_quiet_option
def bench_relay_cmd(datagrams, seed, out_dir, quiet) -> None:
    """What each relay profile does (loss rate, burst length, delay, swaps, duplicates; and
    the TCP mode's retransmission delay), measured on the relay's sans-IO cores."""
    from stemlink.bench.calibrate import PNG, bench_relay, render, save

    r = bench_relay(datagrams, seed,
                    prog.callback("bench relay", "profiles", on=prog.enabled(quiet)))
    click.echo(render(r))
    save(r, Path(out_dir))
    click.echo(f"\nwrote {out_dir}/relay.json, {out_dir}/relay.md, {out_dir}/{PNG}")


@bench.command("playout")
@click.option("--profile", "profiles", multiple=True, default=["wifi"], show_default=True,
              type=click.Choice(["wired", "wifi", "stress"]))
@click.option("--step-jitter-ms", default=30.0, show_default=True,
              type=click.FloatRange(0, 1000),
              help="The step scenario: wifi, then this jitter cap from halfway.")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(2, 3600))
@click.option("--fixed-ms", "fixed_ms", multiple=True, type=click.FloatRange(1, 2000),
              default=[46.0, 20.0], show_default=True, help="Fixed buffers to compare.")
@click.option("--block", default=256, show_default=True, type=click.Choice(["64", "128", "256"]))
@click.option("--period", default=256, show_default=True, type=click.IntRange(16, 8192),
              help="Samples per pop (the device period at 44.1 kHz).")
@click.option("--inference-every", "every", default=8, show_default=True,
              type=click.IntRange(1, 64), help="Server model: blocks per inference.")
@click.option("--compute-ms", default=25.0, show_default=True, type=click.FloatRange(0, 1000),
              help="Server model: one inference's time.")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--out", "out_dir", default="out/bench-playout", show_default=True,
              type=click.Path(file_okay=False))
def bench_playout_cmd(profiles, step_jitter_ms, seconds, fixed_ms, block, period, every,
                      compute_ms, seed, out_dir) -> None:
    """Fixed against adaptive playout buffer on simulated arrivals (the relay's impairment
    model behind a modelled server): mean added delay, concealed blocks, time to adapt."""
    from stemlink.bench.playout import PNG, bench_playout, render

    r = bench_playout(list(profiles), step_jitter_ms, seconds, list(fixed_ms), int(block),
                      period, every, compute_ms, seed, Path(out_dir))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


@bench.command("make-song")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1, 3600))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
def bench_make_song_cmd(path, seconds, seed) -> None:
    """Synthesise a stereo test song (sung vowels, bass, chords, drums), deterministic for a
    seed, as 16-bit WAV at 44.1 kHz."""
    from stemlink.bench.song import write_song

    p = write_song(path, seconds, seed)
    click.echo(f"wrote {p} ({seconds:g} s, seed {seed})")


# --------------------------------------------------------------------------- first contact
@cli.command()
def devices() -> None:
    """List the sound devices `live` can use (index, name, channels, rate, defaults).

    Exits 2 with how to install PortAudio when it is missing."""
    from stemlink.udp_client.devices import (
        list_devices,
        load_sounddevice,
        portaudio_version,
        render,
    )

    sd = load_sounddevice()
    click.echo(render(list_devices(sd), portaudio_version(sd)))


@cli.command()
@_model_option
@click.option("--key-file", type=click.Path(dir_okay=False), envvar="STEMLINK_KEY_FILE",
              help="Check this key file's permissions (or $STEMLINK_KEY_FILE).")
@click.option("--port", default=5005, show_default=True, type=click.IntRange(1, 65535),
              help="UDP port `serve` will listen on.")
def doctor(model: str, key_file: str | None, port: int) -> None:
    """Check everything stemlink needs, in one table, each problem with its fix.

    Exits 1 if something `demo` needs (or the key file given) is broken; warnings (live,
    GPU, the default port) do not change the exit code."""
    from stemlink.doctor import DoctorOptions, exit_code, render, run_checks

    checks = run_checks(DoctorOptions(model, key_file, port))
    click.echo(render(checks))
    sys.exit(exit_code(checks))


# --------------------------------------------------------------------------- demo
@cli.command()
@_model_option
@click.option("--out", "out_dir", default="out/demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
def demo(model: str, out_dir: str, preset: str) -> None:
    """The main job on the bundled example: export the model if absent, start a server on
    loopback, stream audio_example.mp3 through it in real time, write the stems."""
    _need_engine("demo")
    from stemlink.engine.card import CARD_FILE
    from stemlink.export.checkpoint import example_audio
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, send_file
    from stemlink.udp_server.server import ServeOptions, ServerThread

    if not (Path(model) / CARD_FILE).is_file():
        from stemlink.export.spleeter import export_spleeter

        click.echo(f"no model in {model}: exporting Spleeter 2-stems first", err=True)
        on = prog.enabled()
        export_spleeter(model, say=prog.say(on),
                        progress=prog.callback("exporting", "steps", on=on))
    _setup_logging("warning")
    src = example_audio()
    with ServerThread(ServeOptions(model, "127.0.0.1", 0, preset=preset)) as st:
        click.echo(st.server.describe())
        click.echo(f"streaming {src.name} in real time to {st.address[0]}:{st.address[1]} ...")
        line = _StatusLine(quiet=False)
        try:
            rep = run_loop(send_file(SendOptions(src, st.address, out_dir, preset=preset,
                                                 on_status=line.show if line.on else None)))
        finally:
            line.end()
    click.echo(rep.summary(client_cpu=False))  # the demo's server runs in this process
    for name, path in rep.files.items():
        click.echo(f"{name}: {path}")
    click.echo(f"stems written to {out_dir}/")


def _run() -> None:
    try:
        cli.main(standalone_mode=False)
    except BaseException:
        prog.close_all()  # a bar ends where it stood, above the error line
        raise


def main() -> None:
    try:
        _run()
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except StemlinkError as e:
        _err(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug: one line by default, the traceback on request
        if os.environ.get("STEMLINK_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set STEMLINK_DEBUG=1 for details)")
        sys.exit(3)
