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
    _need_engine("export spleeter")  # the export is checked with ONNX Runtime
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
    _need_engine("separate")
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
@click.option("--profile", type=click.Choice(["wired", "wifi", "stress"]), default=None,
              help="Run both systems through `stemlink relay` with this profile (UDP for "
                   "stemlink, its TCP mode for the WebSocket baseline).")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Relay seed (with --profile).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="monitor", show_default=True)
@_backend_option
@click.option("--out", "out_dir", default="out/bench-latency", show_default=True,
              type=click.Path(file_okay=False))
def bench_latency_cmd(model, against, seconds, clients, profile, seed, preset, backend,
                      out_dir) -> None:
    """End-to-end latency (client clock), compute, CPU and bytes: stemlink vs baseline."""
    from stemlink.bench.latency import PNG, bench_latency, render

    r = bench_latency(model, against, seconds, clients, profile, preset, backend,
                      Path(out_dir), seed)
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
def serve(model, host, port, backend, preset, max_sessions, idle_timeout, log_level,
          compute_stats, reorder_ms, playout_ms, psk, key_file, insecure, encrypt,
          sessions_per_address, handshake_rate, handshake_burst, input_factor, metrics_port,
          metrics_host) -> None:
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
                                  reorder_ms=reorder_ms, playout_ms=playout_ms))
    except OSError as e:
        raise StemlinkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if srv.open_warning:
        click.echo(srv.open_warning, err=True)
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
@_encrypt_option
def send(input, server, out_dir, preset, realtime, stats_path, jitter_ms, block, synthesis,
         psk, key_file, encrypt) -> None:
    """Stream a file to a server; write the stems it sends back."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, save_stats, send_file
    from stemlink.udp_client.transport import parse_server

    key, passphrase = _key(key_file, psk)
    opts = SendOptions(input, parse_server(server), out_dir, preset=preset, realtime=realtime,
                       jitter_ms=jitter_ms, block=int(block), psk=passphrase,
                       synthesis=synthesis, key=key, encrypt=encrypt)
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
@_psk_option
@_encrypt_option
def live(server, input_device, output_device, monitor, preset, jitter_blocks, block,
         seconds, psk, key_file, encrypt) -> None:
    """Sound card -> server -> headphones, headless; Ctrl-C exits."""
    from stemlink.loop import run_loop
    from stemlink.udp_client.live import run_live
    from stemlink.udp_client.transport import parse_server

    def dev(d):
        return int(d) if d is not None and d.isdigit() else d

    key, passphrase = _key(key_file, psk)
    try:
        stats = run_loop(run_live(parse_server(server), dev(input_device),
                                             dev(output_device), monitor, preset,
                                             passphrase, jitter_blocks, int(block),
                                             seconds, key=key, encrypt=encrypt))
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
@click.option("--out", "out_dir", default="out/bench-relay", show_default=True,
              type=click.Path(file_okay=False))
def bench_relay_cmd(datagrams, seed, out_dir) -> None:
    """What each relay profile does (loss rate, burst length, delay, swaps, duplicates; and
    the TCP mode's retransmission delay), measured on the relay's sans-IO cores."""
    from stemlink.bench.calibrate import PNG, bench_relay, render, save

    r = bench_relay(datagrams, seed)
    click.echo(render(r))
    save(r, Path(out_dir))
    click.echo(f"\nwrote {out_dir}/relay.json, {out_dir}/relay.md, {out_dir}/{PNG}")


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
    _need_engine("demo")
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
