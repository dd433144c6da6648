"""The `stemlink` command. Errors the user can act on print one line and exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from stemlink.errors import StemlinkError

DEFAULT_MODEL = "models/spleeter-2stems"
PRESET_NAMES = ("ultra", "monitor", "balanced", "quality")
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
def _stream_options(f):
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
             synthesis, offline: bool, backend: str) -> None:
    """Separate an audio file (WAV/FLAC/MP3/...) into one WAV per stem."""
    from stemlink.separate import separate_file

    r = separate_file(input, model, out_dir, preset=preset, offline=offline, backend=backend,
                      hop_frames=hop_frames, lookahead=lookahead, synthesis=synthesis,
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
def bench_engine_cmd(model, backend, seconds, iterations, audio, json_path) -> None:
    """Compute latency per window (p50/p99) and real-time factor per preset."""
    from stemlink.bench.engine_bench import bench_engine, render, save

    result = bench_engine(model, backend, seconds, audio, iterations)
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
def bench_fidelity_cmd(model, audio, json_path) -> None:
    """SDR of streamed stems vs the offline model, per preset."""
    from stemlink.bench.fidelity import bench_fidelity, render, save

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
@click.option("--profile", type=click.Choice(["wired", "wifi"]), default=None,
              help="Network impairment profile (needs the impairment relay).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@_backend_option
@click.option("--out", "out_dir", default="out/bench-latency", show_default=True,
              type=click.Path(file_okay=False))
def bench_latency_cmd(model, against, seconds, clients, profile, preset, backend,
                      out_dir) -> None:
    """End-to-end latency (client clock), compute, CPU and bytes: stemlink vs baseline."""
    from stemlink.bench.latency import PNG, bench_latency, render

    r = bench_latency(model, against, seconds, clients, profile, preset, backend,
                      Path(out_dir))
    click.echo(render(r))
    click.echo(f"\nwrote {out_dir}/results.json, {out_dir}/results.md, {out_dir}/{PNG}")


@bench.command("capacity")
@_model_option
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(BACKENDS),
              help="Backend(s) to measure (default: every available one).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(2, 600),
              help="Audio per step.")
@click.option("--max-clients", default=16, show_default=True, type=click.IntRange(1, 256))
@click.option("--out", "out_dir", default="out/bench-capacity", show_default=True,
              type=click.Path(file_okay=False))
def bench_capacity_cmd(model, backends, preset, seconds, max_clients, out_dir) -> None:
    """Concurrent real-time sessions with zero missed deadlines (ramped up)."""
    from stemlink.bench.capacity import available_backends, bench_capacity, render

    r = bench_capacity(model, list(backends) or available_backends(), preset, seconds,
                       max_clients, Path(out_dir))
    click.echo(render(r))


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
@click.option("--max-sessions", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--idle-timeout", default=10.0, show_default=True,
              type=click.FloatRange(0.5, 3600), help="Seconds of silence that end a session.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--compute-stats", type=click.Path(dir_okay=False), hidden=True,
              help="Write per-block compute times as JSON at exit (used by benchmarks).")
@_psk_option
def serve(model, host, port, backend, preset, max_sessions, idle_timeout, log_level,
          compute_stats, psk) -> None:
    """Run the UDP separation server (SIGINT/SIGTERM stop it cleanly)."""
    from stemlink.loop import run_loop
    from stemlink.udp_server.server import ServeOptions, Server

    _setup_logging(log_level)
    try:
        srv = Server(ServeOptions(model, host, port, backend, preset, max_sessions,
                                  idle_timeout, psk.encode(), compute_stats))
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
@_psk_option
def send(input, server, out_dir, preset, realtime, stats_path, jitter_ms, block, synthesis,
         psk) -> None:
    """Stream a file to a server; write the stems it sends back."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, save_stats, send_file
    from stemlink.udp_client.transport import parse_server

    opts = SendOptions(input, parse_server(server), out_dir, preset=preset, realtime=realtime,
                       jitter_ms=jitter_ms, block=int(block), psk=psk.encode(),
                       synthesis=synthesis)
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
              help="Stop after this long (default: run until Ctrl-C or SIGTERM).")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False),
              help="Write xruns, underruns, concealed blocks and the stated latency as JSON.")
@_psk_option
def live(server, input_device, output_device, monitor, preset, jitter_blocks, block,
         seconds, stats_path, psk) -> None:
    """Sound card -> server -> headphones, headless; Ctrl-C or SIGTERM exits."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.live import run_live, save_stats
    from stemlink.udp_client.transport import parse_server

    def dev(d):
        return int(d) if d is not None and d.isdigit() else d

    try:
        stats = run_loop(run_live(parse_server(server), dev(input_device),
                                             dev(output_device), monitor, preset,
                                             psk.encode(), jitter_blocks, int(block),
                                             seconds))
        for stem, js in stats["jitter"].items():
            click.echo(f"{stem}: played {js['pushed']} blocks, concealed {js['concealed']}, "
                       f"late {js['late']}, duplicates {js['duplicates']}")
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
def relay(listen, to, profile, loss, burst, jitter_ms, delay_ms, reorder, duplicate, outage,
          seed, log_path, seconds) -> None:
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
              log_path, seconds, lambda s: click.echo(s, err=True))


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
