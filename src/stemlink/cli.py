"""The `stemlink` command. Errors the user can act on print one line and exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from stemlink.errors import StemlinkError

DEFAULT_MODEL = "models/spleeter-2stems"
PRESET_NAMES = ("extreme", "ultra", "monitor", "balanced", "quality")
BACKENDS = ("cpu", "cuda", "tensorrt")


def _err(msg: str) -> None:
    click.echo(f"stemlink: error: {msg}", err=True)


def _progress(label: str):
    """A progress callback (done, total) that draws a bar on a terminal, else stays quiet."""
    if not sys.stderr.isatty():
        return None
    state: dict = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["pos"] = 0
        bar.update(done - state["pos"])
        state["pos"] = done
        if done >= total:
            bar.__exit__(None, None, None)

    return update


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
def export_spleeter_cmd(out: str, window_frames: int) -> None:
    """Export Deezer's Spleeter 2-stems (vocals/accompaniment) to ONNX."""
    from stemlink.export.spleeter import export_spleeter

    export_spleeter(out, window_frames, say=lambda s: click.echo(s, err=True))
    click.echo(f"model ready in {out}")


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
    f = click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor",
                     show_default=True, help="Latency/quality preset.")(f)
    return f


@cli.command()
@click.argument("input", type=click.Path(dir_okay=False))
@_model_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for <stem>.wav files.")
@_stream_options
@click.option("--offline", is_flag=True, help="Whole-file reference separation instead.")
@_backend_option
def separate(input: str, model: str, out_dir: str, preset: str, hop_frames, lookahead,
             synthesis, synthesis_hop, mask_hold, offline: bool, backend: str) -> None:
    """Separate an audio file (WAV/FLAC/MP3/...) into one WAV per stem."""
    from stemlink.separate import separate_file

    r = separate_file(input, model, out_dir, preset=preset, offline=offline, backend=backend,
                      hop_frames=hop_frames, lookahead=lookahead, synthesis=synthesis,
                      synthesis_hop=synthesis_hop, mask_hold=mask_hold,
                      progress=_progress("separating"))
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
@_cadence_options
def bench_engine_cmd(model, backend, seconds, iterations, audio, json_path, synthesis_hop,
                     mask_hold) -> None:
    """Compute latency per inference (p50/p99) against its period (H*k*m samples) and
    real-time factor, per preset (plus one custom cadence with --synthesis-hop/--mask-hold)."""
    from stemlink.bench.engine_bench import bench_engine, render, save

    result = bench_engine(model, backend, seconds, audio, iterations, synthesis_hop,
                          mask_hold)
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
def bench_fidelity_cmd(model, audio, json_path, grid, jobs) -> None:
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
        r = bench_fidelity(model, audio)
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
def bench_latency_cmd(model, against, seconds, clients, profile, seed, preset, synthesis_hop,
                      mask_hold, backend, out_dir) -> None:
    """End-to-end latency (client clock), compute, CPU and bytes: stemlink vs baseline."""
    from stemlink.bench.latency import PNG, bench_latency, render

    r = bench_latency(model, against, seconds, clients, profile, preset, backend,
                      Path(out_dir), seed, synthesis_hop, mask_hold)
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
@click.option("--out", "out_dir", default="out/bench-capacity", show_default=True,
              type=click.Path(file_okay=False))
def bench_capacity_cmd(model, backends, preset, synthesis_hop, mask_hold, seconds,
                       max_clients, out_dir) -> None:
    """Concurrent real-time sessions with zero missed deadlines (ramped up)."""
    from stemlink.bench.capacity import available_backends, bench_capacity, render

    r = bench_capacity(model, list(backends) or available_backends(), preset, seconds,
                       max_clients, Path(out_dir), synthesis_hop, mask_hold)
    click.echo(render(r))


# --------------------------------------------------------------------------- network
def _psk_option(f):
    return click.option("--psk", envvar="STEMLINK_PSK", default="", show_default=False,
                        help="Pre-shared key (or $STEMLINK_PSK); empty = integrity only.")(f)


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
@_psk_option
def serve(model, host, port, backend, preset, synthesis_hop, mask_hold, max_sessions,
          idle_timeout, log_level, compute_stats, reorder_ms, playout_ms, psk) -> None:
    """Run the UDP separation server (SIGINT/SIGTERM stop it cleanly)."""
    from stemlink.loop import run_loop
    from stemlink.udp_server.server import ServeOptions, Server

    _setup_logging(log_level)
    try:
        srv = Server(ServeOptions(model, host, port, backend, preset, max_sessions,
                                  idle_timeout, psk.encode(), compute_stats,
                                  reorder_ms=reorder_ms, playout_ms=playout_ms,
                                  synthesis_hop=synthesis_hop, mask_hold=mask_hold))
    except OSError as e:
        raise StemlinkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    click.echo(srv.describe(), err=True)
    run_loop(srv.run(install_signals=True))


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
@_psk_option
def send(input, server, out_dir, preset, realtime, stats_path, jitter_ms, block, synthesis,
         synthesis_hop, mask_hold, psk) -> None:
    """Stream a file to a server; write the stems it sends back."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, save_stats, send_file
    from stemlink.udp_client.transport import parse_server

    opts = SendOptions(input, parse_server(server), out_dir, preset=preset, realtime=realtime,
                       jitter_ms=jitter_ms, block=int(block), psk=psk.encode(),
                       synthesis=synthesis, synthesis_hop=synthesis_hop,
                       mask_hold=mask_hold)
    rep = run_loop(send_file(opts))
    click.echo(rep.summary() if realtime else rep.summary().replace(
        "end-to-end latency", "(not paced in real time) end-to-end latency"))
    for name, path in rep.files.items():
        click.echo(f"{name}: {path}")
    if stats_path:
        save_stats(rep, stats_path)


@cli.command()
@click.option("--server", default="127.0.0.1:5005", show_default=True, help="HOST:PORT")
@click.option("--input-device", default=None, help="PortAudio input device (index or name).")
@click.option("--output-device", default=None, help="PortAudio output device.")
@click.option("--monitor", default="accompaniment", show_default=True,
              help="Stem to hear, or a mix: vocals=0.2,accompaniment=1")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None)
@click.option("--jitter-blocks", default=8, show_default=True, type=click.IntRange(1, 60),
              help="Playout buffer in blocks (the fixed delay it adds); it must cover the "
                   "server's inference time, ~25 ms on a 2-core CPU.")
@click.option("--block", default=256, show_default=True, type=click.Choice(["64", "128", "256"]))
@click.option("--seconds", type=click.FloatRange(0.5, None), default=None,
              help="Stop after this long (default: run until Ctrl-C).")
@_cadence_options
@_psk_option
def live(server, input_device, output_device, monitor, preset, jitter_blocks, block,
         seconds, synthesis_hop, mask_hold, psk) -> None:
    """Sound card -> server -> headphones, headless; Ctrl-C exits."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.live import run_live
    from stemlink.udp_client.transport import parse_server

    def dev(d):
        return int(d) if d is not None and d.isdigit() else d

    try:
        stats = run_loop(run_live(parse_server(server), dev(input_device),
                                             dev(output_device), monitor, preset,
                                             psk.encode(), jitter_blocks, int(block),
                                             seconds, synthesis_hop=synthesis_hop,
                                             mask_hold=mask_hold))
        for stem, js in stats["jitter"].items():
            click.echo(f"{stem}: played {js['pushed']} blocks, concealed {js['concealed']}, "
                       f"late {js['late']}, duplicates {js['duplicates']}")
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
    run_relay(cfg, parse_host_port(listen, "--listen"), parse_host_port(to, "--to"),
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
@click.option("--out", "out_dir", default="out/bench-network", show_default=True,
              type=click.Path(file_okay=False))
def bench_network_cmd(model, backend, audio, seconds, profiles, specs, losses, burst, outages,
                      clients, preset, seed, sdr_from, send_opts, out_dir) -> None:
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
    click.echo("command: stemlink " + shlex.join(sys.argv[1:]), err=True)
    r = bench_network(model, audio, seconds, list(profiles), list(specs), list(losses), burst,
                      list(outages), clients, preset, backend, seed, sdr_from,
                      parse_send_opts(list(send_opts)), Path(out_dir),
                      say=lambda s: click.echo(s, err=True))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


@bench.command("relay")
@click.option("--datagrams", default=200_000, show_default=True,
              type=click.IntRange(1000, 10_000_000), help="Datagrams per profile.")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON here.")
def bench_relay_cmd(datagrams, seed, json_path) -> None:
    """What each relay profile does (loss rate, burst length, delay, swaps, duplicates; and
    the TCP mode's retransmission delay), measured on the relay's sans-IO cores."""
    from stemlink.bench.calibrate import bench_relay, render, save

    r = bench_relay(datagrams, seed)
    click.echo(render(r))
    if json_path:
        save(r, json_path)


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


# --------------------------------------------------------------------------- demo
@cli.command()
@_model_option
@click.option("--out", "out_dir", default="out/demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
def demo(model: str, out_dir: str, preset: str) -> None:
    """The main job on the bundled example: export the model if absent, start a server on
    loopback, stream audio_example.mp3 through it in real time, write the stems."""
    from stemlink.engine.card import CARD_FILE
    from stemlink.export.checkpoint import example_audio
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, send_file
    from stemlink.udp_server.server import ServeOptions, ServerThread

    if not (Path(model) / CARD_FILE).is_file():
        from stemlink.export.spleeter import export_spleeter

        click.echo(f"no model in {model}: exporting Spleeter 2-stems first", err=True)
        export_spleeter(model, say=lambda s: click.echo(s, err=True))
    _setup_logging("warning")
    src = example_audio()
    with ServerThread(ServeOptions(model, "127.0.0.1", 0, preset=preset)) as st:
        click.echo(st.server.describe())
        click.echo(f"streaming {src.name} in real time to {st.address[0]}:{st.address[1]} ...")
        rep = run_loop(send_file(SendOptions(src, st.address, out_dir,
                                                        preset=preset)))
    click.echo(rep.summary())
    for name, path in rep.files.items():
        click.echo(f"{name}: {path}")
    click.echo(f"stems written to {out_dir}/")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
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
