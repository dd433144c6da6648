"""`stemlink bench live`: `stemlink live` through a real audio stack, measured to the sample.

Per configuration (preset x device rate x network profile):
- a JACK server on its dummy driver, paced in real time, at the device rate (started here
  under a private name, or reused with --jack-server);
- a stemlink server on loopback (child process, ephemeral port), optionally behind
  `stemlink relay --profile P`;
- `stemlink live` (child process, its real CLI) on PortAudio's JACK device;
- a JACK player feeding the song into live's capture ports and a JACK recorder on its
  playback ports (bench/jackrig.py), both on the JACK frame clock.

Measured: input-to-output latency, from the cross-correlation of the recording with the
expected monitor mix (the same stems from the file path, `stemlink separate --preset P`,
same model and preset), over the whole song and in windows (latency over time); live's own
stated total next to it; xruns (JACK's, and the callbacks PortAudio flagged), underruns
and concealed blocks; SDR of the recording against the file path after removing the
measured latency; live's CPU from /proc.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.bench import procs
from stemlink.bench.fidelity import sdr
from stemlink.bench.jackrig import (
    JackServer,
    Rig,
    die_with_parent,
    portaudio_jack_device,
    raise_priority,
    self_test,
)
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.errors import StemlinkError
from stemlink.percentiles import summarize
from stemlink.udp_client.live import SIGNAL_THRESHOLD

PNG = "latency_over_time.png"
WINDOW_S = 1.0  # latency-over-time window
HOP_S = 0.5
SEARCH_S = 0.25  # windowed search radius around the whole-song lag
MAX_LAG_S = 3.0  # whole-song search range
TAIL_S = 1.5  # recorded after the song ends (room for the latency)
LIVE_START_TIMEOUT_S = 60.0
LIVE_STOP_TIMEOUT_S = 15.0
SERVER_START_TIMEOUT_S = 120.0
# jackd, the server and live each run in their own session with this nice (their autogroup's
# too), where permitted: on a shared machine the audio path gets its share of the CPU.
AUDIO_NICE = -20
SILENT_WINDOW = 1e-3  # windows below this fraction of the mean energy are not timed
MIN_WINDOW_CORR = 0.5  # windows whose normalised correlation peak is lower are not timed


class LiveBenchError(StemlinkError):
    pass


@dataclass
class LiveConfig:
    preset: str
    rate: int
    profile: str = "loopback"  # loopback (no relay) | a `stemlink relay` profile
    monitor: str = "accompaniment"
    jitter: str | None = None  # passed to live as --jitter (auto or ms; None: its default)
    stop_signal: int = signal.SIGTERM

    @property
    def label(self) -> str:
        return f"{self.preset}-{self.rate}-{self.profile}"


# ------------------------------------------------------------------------------ live child
def jitter_args(jitter: str | None) -> list[str]:
    """live's `--jitter auto|MS`, checked here so a bad value fails before anything starts
    (None: live's own default, adaptive)."""
    if jitter is None:
        return []
    if jitter.strip().lower() == "auto":
        return ["--jitter", "auto"]
    try:
        ms = float(jitter)
    except ValueError:
        ms = float("nan")
    if not np.isfinite(ms) or ms <= 0:
        raise LiveBenchError(f"--jitter {jitter!r}: use auto or a buffer in ms (> 0)")
    return ["--jitter", f"{ms:g}"]


class LiveChild:
    """`python -m stemlink live ...` on the JACK device; stopped with a signal."""

    def __init__(self, server_addr: str, device: int, cfg: LiveConfig, stats: Path,
                 env: dict, extra: list[str]) -> None:
        self.stats_path = stats
        args = [sys.executable, "-m", "stemlink", "live", "--server", server_addr,
                "--input-device", str(device), "--output-device", str(device),
                "--monitor", cfg.monitor, "--preset", cfg.preset, "--stats", str(stats), *extra]
        self.command = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True,
                                     preexec_fn=die_with_parent)
        self.lines: list[str] = []
        self.cpu0 = self.t0 = None

    def wait_for(self, text: str, timeout: float) -> str:
        """Read live's output until a line containing `text` (it prints as it goes)."""
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=0.2):
                    if self.proc.poll() is not None:
                        break
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip())
                if text in line:
                    return line
        finally:
            sel.close()
        raise LiveBenchError(f"`stemlink live` did not print {text!r}: "
                             f"{' | '.join(self.lines[-5:]) or '(no output)'}")

    def mark_cpu(self) -> None:
        self.t0, self.cpu0 = time.monotonic(), procs.cpu_seconds(self.proc.pid)

    def cpu_cores(self) -> float:
        return ((procs.cpu_seconds(self.proc.pid) - self.cpu0)
                / max(time.monotonic() - self.t0, 1e-9))

    def stop(self, sig: int) -> tuple[int, float]:
        """Signal it, wait; returns (exit status, seconds it took to exit)."""
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                out, _ = self.proc.communicate(timeout=LIVE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
                self.lines.append("(killed: did not stop on the signal)")
            self.lines += (out or "").splitlines()
        return self.proc.returncode, time.monotonic() - t

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}


class AudioPathChild(procs.Child):
    """A child on the audio path (the server, the relay) in its own session, so its
    priority can be raised; ready when its stderr shows `ready`."""

    def __init__(self, args: list[str], ready: str, nice: int) -> None:
        self.nice_applied = None

        def prioritise(proc: subprocess.Popen) -> None:
            self.nice_applied = raise_priority(proc.pid, nice) if nice else None

        super().__init__(["-m", "stemlink", *args], ready,
                         popen={"start_new_session": True, "preexec_fn": die_with_parent},
                         on_spawn=prioritise, start_timeout_s=SERVER_START_TIMEOUT_S,
                         error=LiveBenchError, name=args[0])

    def session_ends(self) -> list[str]:
        """The server's one-line account of each session it closed (its JSON log line,
        event session_end)."""
        return [ln.strip() for ln in self.log if '"event":"session_end"' in ln]


# ------------------------------------------------------------------------------ relay child
def start_relay(profile: str, upstream_port: int, seed: int, nice: int):
    """`stemlink relay --profile P` between live and the server, at the audio path's
    priority (an emulated network should add its profile's delays, not the machine's
    load); -> (child, listen port)."""
    child = AudioPathChild(["relay", "--listen", "127.0.0.1:0", "--to",
                            f"127.0.0.1:{upstream_port}", "--profile", profile, "--seed",
                            str(seed)], "stemlink relay listening on", nice)
    m = re.search(r"listening on [^\s]+:(\d+)", child.log[-1])
    if m is None:
        child.stop()
        raise LiveBenchError(f"cannot read the relay's port from: {child.log[-1].strip()}")
    return child, int(m.group(1))


def relay_summary(child) -> list[str]:
    """The relay's own per-direction counts (it prints them at exit)."""
    return [ln.strip() for ln in child.log if ln.strip().startswith(("up:", "down:"))]


# ------------------------------------------------------------------------------ analysis
def _xcorr(rec: np.ndarray, ref: np.ndarray, max_lag: int) -> np.ndarray:
    """Cross-correlation of rec against ref for lags 0..max_lag (FFT), summed over
    channels."""
    n = 1 << int(np.ceil(np.log2(rec.shape[-1] + ref.shape[-1])))
    spec = np.sum(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), axis=0)
    return np.fft.irfft(spec, n)[:max_lag + 1]


def _parabolic(c: np.ndarray, k: int) -> float:
    if 0 < k < c.size - 1:
        a, b, d = c[k - 1], c[k], c[k + 1]
        den = a - 2 * b + d
        if den < 0:
            return float(k + 0.5 * (a - d) / den)
    return float(k)


def _fractional_delay(x: np.ndarray, delay: float) -> np.ndarray:
    """x delayed by `delay` samples (any real number), along the last axis (FFT)."""
    n = x.shape[-1]
    m = 1 << int(np.ceil(np.log2(n + abs(int(delay)) + 64)))
    f = np.fft.rfftfreq(m)
    spec = np.fft.rfft(x, m) * np.exp(-2j * np.pi * f * delay)
    return np.fft.irfft(spec, m)[..., :n].astype(np.float32)


def measure(rec: np.ndarray, expected: np.ndarray, rate: int) -> dict:
    """Latency (whole song and per window) and SDR of `rec` against `expected`, both
    [C, n] at `rate`; rec starts at the frame the song's first sample was played."""
    n = expected.shape[1]
    max_lag = min(int(MAX_LAG_S * rate), rec.shape[1] - 1)
    c = _xcorr(rec, expected, max_lag)
    k = int(np.argmax(c))
    lag = _parabolic(c, k)
    # per window: where does this stretch of the expected signal sit in the recording?
    win, hop, radius = int(WINDOW_S * rate), int(HOP_S * rate), int(SEARCH_S * rate)
    energy = np.sum(expected**2) / max(n, 1)
    times, lags, sdrs, skipped = [], [], [], 0
    for a in range(0, n - win + 1, hop):
        ref = expected[:, a:a + win]
        e_ref = float(np.sum(ref**2))
        lo = a + k - radius
        if lo < 0 or a + k + radius + win > rec.shape[1] or e_ref < SILENT_WINDOW * energy * win:
            skipped += 1
            continue
        seg = rec[:, lo:lo + win + 2 * radius]
        cc = _xcorr(seg, ref, 2 * radius)
        j = int(np.argmax(cc))
        e_seg = float(np.sum(seg[:, j:j + win]**2))
        peak = cc[j] / np.sqrt(max(e_ref * e_seg, 1e-30))
        if peak < MIN_WINDOW_CORR:
            skipped += 1
            continue
        times.append((a + win / 2) / rate)
        lags.append(lo - a + _parabolic(cc, j))
        # this window's SDR at its own lag: an adaptive playout buffer moves the lag by
        # whole blocks during the song, so one lag for the whole song would measure that
        at = _parabolic(cc, j)
        lo2 = lo + int(np.ceil(at))
        if lo2 + win <= rec.shape[1]:
            sdrs.append(sdr(_fractional_delay(ref, at - int(np.ceil(at))),
                            rec[:, lo2:lo2 + win]))
    lags_ms = [1000 * v / rate for v in lags]
    # SDR after removing the measured latency (fractional: 48 kHz paths are not whole-sample)
    start = int(np.ceil(lag))
    out = rec[:, start:start + n]
    ref = _fractional_delay(expected, lag - start)[:, :out.shape[1]]
    return {
        "latency_samples": lag,
        "latency_ms": 1000 * lag / rate,
        "peak_correlation": float(c[k] / np.sqrt(max(np.sum(rec[:, k:k + n]**2)
                                                     * np.sum(expected**2), 1e-30))),
        "windows": {"times_s": times, "latency_ms": lags_ms, "skipped": skipped,
                    "window_s": WINDOW_S, "hop_s": HOP_S},
        "latency_over_time_ms": summarize(lags_ms, (1, 50, 99)),
        "sdr_db": sdr(ref, out),  # at the whole-song lag
        # per window, each at its own lag (what the stems sound like, timing aside)
        "sdr_windows_db": summarize(sdrs, (1, 50)) if sdrs else None,
    }


# ------------------------------------------------------------------------------ one run
class FilePath:
    """The file path's stems for a song (the streaming separator of `stemlink separate
    --preset P`, same model and preset), aligned to the input.

    A streaming separator's output depends on where its STFT/inference grid (H hops) falls
    in the signal: `live` starts its media clock when capture starts, not when the song
    does, so the song enters the server `phase` samples into the grid. The reference is
    computed with the same phase (that much silence first, then removed), which live's
    stats give exactly (the media timestamp of the first input sample above -60 dBFS)."""

    def __init__(self, model: str, song: np.ndarray, song_sr: int) -> None:
        from stemlink.engine.session import open_engine

        self.engine = open_engine(model, "cpu")
        self.card = self.engine.card
        self.x = aio.resample(aio.to_channels(song, self.card.channels), song_sr,
                              self.card.sample_rate)
        self.song_sr, self.n = song_sr, song.shape[1]
        self.rate = self.card.sample_rate  # the model's: live's media timestamps
        self.cache: dict = {}

    def grid(self, preset: str) -> int:
        """The separator's output repeats its computation every inference period (H
        hops, or k synthesis hops of m samples): the phase that matters is modulo it."""
        return self.engine.latency(self.engine.config(preset, None, None, None)).period

    def first_signal(self) -> int:
        loud = np.flatnonzero(np.max(np.abs(self.x), axis=0) > SIGNAL_THRESHOLD)
        return int(loud[0]) if loud.size else 0

    def stems(self, preset: str, phase: int) -> dict:
        from stemlink.separate import stream_array

        phase %= self.grid(preset)
        key = (preset, phase)
        if key not in self.cache:
            sep = self.engine.separator(self.engine.config(preset, None, None, None))
            padded = np.concatenate([np.zeros((self.x.shape[0], phase), np.float32), self.x],
                                    axis=1)
            out = stream_array(sep, padded)[:, :, phase:]
            self.cache[key] = {
                name: aio.resample(s, self.card.sample_rate, self.song_sr, length=self.n)
                for name, s in zip(self.card.stems, out, strict=True)}
        return self.cache[key]

    def close(self) -> None:
        self.engine.close()


def monitor_mix(stems: dict, monitor: str) -> np.ndarray:
    from stemlink.udp_client.mix import parse_mix

    names = list(stems)
    gains = parse_mix(monitor, names)
    return sum(g * stems[nm] for g, nm in zip(gains, names, strict=True) if g)


def run_one(cfg: LiveConfig, model: str, song: np.ndarray, song_sr: int, ref: FilePath,
            server_port: int, jack: JackServer, device: int, tmp: Path, seed: int,
            nice: int = 0, keep_audio: Path | None = None,
            server: AudioPathChild | None = None) -> dict:
    song_dev = aio.resample(song, song_sr, jack.rate)
    relay, relay_lines = None, []
    port = server_port
    if cfg.profile != "loopback":
        relay, port = start_relay(cfg.profile, server_port, seed, nice)
    rig = Rig(jack, song_dev, tail=int(TAIL_S * jack.rate))
    live = None
    try:
        before = rig.port_names()
        stats_path = tmp / f"live-{cfg.label}.json"
        live = LiveChild(f"127.0.0.1:{port}", device, cfg, stats_path, jack.env,
                         jitter_args(cfg.jitter))
        if nice:
            raise_priority(live.proc.pid, nice)
        live.wait_for("stated input-to-output latency", LIVE_START_TIMEOUT_S)
        ins, outs = rig.portaudio_ports(before)
        if len(ins) < 2 or len(outs) < 2:
            raise LiveBenchError(f"live's JACK ports not found (in {ins}, out {outs})")
        rig.wire(ins, outs)
        time.sleep(0.2)  # a few cycles with the new connections before the song starts
        live.mark_cpu()
        xruns0 = rig.state.xruns
        rig.play()
        secs = rig.rec.shape[1] / jack.rate
        if not rig.wait_done(secs + 30):
            raise LiveBenchError("the JACK recorder stopped advancing (JACK server stalled?)")
        cpu = live.cpu_cores()
        jack_xruns = rig.state.xruns - xruns0
        ends_before = len(server.session_ends()) if server is not None else 0
        rc, stop_s = live.stop(cfg.stop_signal)
        stats = live.stats()
        time.sleep(0.3)  # live's BYE reaches the server, which logs the session's end
        left = [p for p in rig.port_names() - before if not p.startswith("stemlink-")]
    finally:
        if live is not None and live.proc.poll() is None:  # interrupted: stop it cleanly
            live.stop(signal.SIGTERM)
        rig.close()
        if relay is not None:
            relay.stop()
            time.sleep(0.2)  # its summary lines reach our log reader
            relay_lines = relay_summary(relay)
    if rc != 0 or not stats:
        raise LiveBenchError(f"live exited with status {rc} after the signal: "
                             f"{' | '.join(live.lines[-5:])}")
    session = server.session_ends()[ends_before:] if server is not None else []
    first = stats.get("first_signal_media_ts")
    phase = 0 if first is None else first - ref.first_signal()
    expected = monitor_mix(ref.stems(cfg.preset, phase), cfg.monitor)
    exp_dev = aio.resample(expected, song_sr, jack.rate, length=song_dev.shape[1])
    m = measure(rig.rec, exp_dev, jack.rate)
    lat = stats.get("latency", {})
    # live's stated total at the capture time of each window (song time -> live's capture
    # frames: the song's first sound sits at live's first_signal_media_ts)
    start = None if first is None else (first - ref.first_signal()) * jack.rate / ref.rate
    m["windows"]["stated_ms"] = stated_at(m["windows"]["times_s"], m["windows"]["latency_ms"],
                                          lat.get("over_time"), start, jack.rate)
    diff = [a - b for a, b in zip(m["windows"]["latency_ms"], m["windows"]["stated_ms"],
                                  strict=True) if b is not None]
    if keep_audio is not None:  # what live played, and what the file path says it should be
        aio.write_audio(keep_audio / f"recorded-{cfg.label}.wav", rig.rec, jack.rate)
        aio.write_audio(keep_audio / f"expected-{cfg.label}.wav", exp_dev, jack.rate)
    stated = lat.get("stated_total_ms")
    minutes = secs / 60
    jb = stats.get("jitter", {})
    if "concealed" in jb:  # one playout buffer for every stem (live's playout design)
        jb = {"all stems": jb}
    xr = stats.get("xruns", {})
    return {
        "config": {"preset": cfg.preset, "device_rate": jack.rate, "profile": cfg.profile,
                   "monitor": cfg.monitor, "jitter": cfg.jitter,
                   "jack_period": jack.period, "stop_signal": signal.Signals(cfg.stop_signal).name},
        "live_command": " ".join(["stemlink", *live.command[3:]]),
        "seconds": secs,
        "measured": m,
        "file_path_grid_phase": phase % ref.grid(cfg.preset),
        "song_start_capture_frame": start,  # live's capture frame of the song's sample 0
        "stated_total_ms": stated,
        "measured_minus_stated_ms": None if stated is None else m["latency_ms"] - stated,
        # the stated total over the song (live's account, at each window's capture time),
        # and measured - stated window by window: the comparison that holds when the
        # adaptive playout buffer moves the latency during the song
        "stated_over_time_ms": summarize([v for v in m["windows"]["stated_ms"]
                                          if v is not None], (1, 50, 99)),
        "measured_minus_stated_windows_ms": {**summarize(diff, (1, 50, 99)),
                                             "max_abs": max(map(abs, diff), default=None)},
        "inserted_blocks": {k: v.get("inserted") for k, v in jb.items()},
        "cut_samples": {k: v.get("cut_samples") for k, v in jb.items()},
        "live_latency": lat,
        "jack_xruns": jack_xruns,
        "jack_xruns_per_min": jack_xruns / minutes,
        "live_xrun_callbacks": xr,
        "live_xrun_callbacks_per_min": xr.get("output_underflow", 0) / minutes,
        "underruns": stats.get("underruns"),
        "concealed_blocks": {k: v.get("concealed") for k, v in jb.items()},
        "late_blocks": {k: v.get("late") for k, v in jb.items()},
        "client_cpu_cores": cpu,
        "live_exit": {"status": rc, "seconds": stop_s,
                      "stopped_by_signal": stats.get("stopped_by_signal"),
                      "jack_ports_left": left},
        "live_output": live.lines[-6:],
        "relay": relay_lines,
        "server_session": session[-1] if session else None,
        "server_input_concealed_blocks": _count(session, r"concealed blocks (\d+)"),
        "server_overload_drops": _count(session, r"overload drops (\d+)"),
    }


def stated_at(times_s: list[float], lags_ms: list[float], over: dict | None,
              start_frame: float | None, rate: int, window_s: float = WINDOW_S,
              points: int = 21) -> list[float | None]:
    """live's stated total (its latency account's series: capture frame, ms) for each
    window: of the values it stated while the window's input was captured (song time s ->
    capture frame start + s * rate), the one nearest the window's measured lag (a window
    over a step of the adaptive buffer measures one side of it). None where live gave no
    series."""
    if not over or start_frame is None or not over.get("capture_frames"):
        return [None] * len(times_s)
    frames = np.asarray(over["capture_frames"], np.float64)
    totals = np.asarray(over["total_ms"], np.float64)
    span = np.linspace(-window_s / 2, window_s / 2, points)
    out: list[float | None] = []
    for t, lag in zip(times_s, lags_ms, strict=True):
        # each point holds until the next (a step, not a ramp: no value in between)
        at = np.searchsorted(frames, start_frame + (t + span) * rate, side="right") - 1
        cand = totals[np.clip(at, 0, totals.size - 1)]
        out.append(float(cand[np.argmin(np.abs(cand - lag))]))
    return out


def _count(lines: list[str], pattern: str) -> int | None:
    """A counter from the server's session-end line (None where it does not say)."""
    found = [re.search(pattern, ln) for ln in lines]
    return sum(int(f.group(1)) for f in found if f) if any(found) else None


# ------------------------------------------------------------------------------ the command
def bench_live(model: str, presets: list[str], rates: list[int], profiles: list[str],
               seconds: float, audio: str | None, monitor: str, jitter: str | None,
               jack_server: str | None, backend: str, out: Path, seed: int = 1,
               stop_signal: int = signal.SIGTERM, realtime: bool = True,
               sync: bool = True, nice: int = AUDIO_NICE, keep_audio: bool = False) -> dict:
    load = _loadavg()
    result = _bench_live(model, presets, rates, profiles, seconds, audio, monitor, jitter,
                         jack_server, backend, out, seed, stop_signal, realtime, sync, nice,
                         keep_audio)
    result["load_before"] = load
    write_report(out, "results", result, render(result))
    plot(result, out / PNG)
    return result


def _bench_live(model, presets, rates, profiles, seconds, audio, monitor, jitter, jack_server,
                backend, out, seed, stop_signal, realtime, sync, nice, keep_audio) -> dict:
    from stemlink.bench.latency import bench_audio

    out.mkdir(parents=True, exist_ok=True)
    runs = []
    jitter_args(jitter)  # a bad --jitter fails here, before jackd or the server start
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        wav = tmp / "song.wav"
        if audio:
            x, sr = aio.read_audio(audio)
            x = aio.to_channels(x, 2)[:, :int(seconds * sr)]
            aio.write_audio(wav, x, sr, subtype="PCM_16")
            song, song_sr = aio.read_audio(wav)
        else:
            song, song_sr = bench_audio(seconds, wav)
        song = aio.to_channels(song, 2)
        ref = FilePath(model, song, song_sr)
        port = procs.free_port()
        server = AudioPathChild(["serve", "--model", model, "--port", str(port), "--preset",
                                 presets[0], "--backend", backend, "--log-level", "info"],
                                "stemlink serving", nice)
        try:
            for rate in rates:
                jack = JackServer(rate, reuse=jack_server, realtime=realtime, sync=sync,
                                  nice=nice)
                try:
                    rig_lag = self_test(jack)
                    device = portaudio_jack_device(jack)
                    for profile in profiles:
                        for preset in presets:
                            cfg = LiveConfig(preset, rate, profile, monitor, jitter, stop_signal)
                            r = run_one(cfg, model, song, song_sr, ref, port, jack,
                                        device, tmp, seed, nice,
                                        out if keep_audio else None, server)
                            r["rig_self_test_lag_frames"] = rig_lag
                            runs.append(r)
                finally:
                    jack.stop()
                for r in runs:
                    if r["config"]["device_rate"] == rate:
                        r["jackd"] = {"started_here": jack.proc is not None,
                                      "realtime": jack.realtime,
                                      "exit_status": jack.proc and jack.proc.returncode,
                                      "gone": jack.proc is None or jack.proc.poll() is not None,
                                      "xrun_blame_whole_server_run": jack.xrun_blame()}
            server_cpu = server.cpu_use()
        finally:
            server.stop()
            ref.close()
    result = {
        "benchmark": "live", "command": "stemlink " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_after": _loadavg(), "backend": backend,
        "audio": audio or "audio_example.mp3 (looped)", "monitor": monitor,
        "jack": {"driver": "dummy", "sync": sync, "realtime": realtime,
                 "reused_server": jack_server},
        "audio_path_nice": server.nice_applied,
        "server_cpu_cores": server_cpu, "runs": runs,
    }
    return result


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def render(result: dict) -> str:
    rows = []

    def pair(d: dict | None, a: str, b: str, fmt: str = ".1f") -> str:
        if not d or d.get(a) is None or not np.isfinite(d.get(a, np.nan)):
            return "–"
        return f"{d[a]:{fmt}} / {d[b]:{fmt}}"

    for r in result["runs"]:
        c, m = r["config"], r["measured"]
        conc = sum(v or 0 for v in r["concealed_blocks"].values())
        ins = sum(v or 0 for v in r.get("inserted_blocks", {}).values())
        cut = sum(v or 0 for v in r.get("cut_samples", {}).values())
        model_rate = r["live_latency"].get("model_rate", 44100)
        rows.append([
            c["preset"], c["device_rate"], c["profile"],
            "adaptive" if c.get("jitter") in (None, "auto") else f"fixed {c['jitter']} ms",
            f"{r['stated_total_ms']:.1f}" if r["stated_total_ms"] is not None else "–",
            pair(r.get("stated_over_time_ms"), "p50", "p99"),
            pair(m["latency_over_time_ms"], "p50", "p99"),
            pair(r.get("measured_minus_stated_windows_ms"), "p50", "max_abs", "+.2f"),
            f"{r['jack_xruns_per_min']:.1f}", f"{r['live_xrun_callbacks_per_min']:.1f}",
            r["underruns"], f"{conc} / {ins}", f"{1000 * cut / model_rate:.0f}",
            pair(m.get("sdr_windows_db"), "p50", "p1"), f"{m['sdr_db']:.1f}",
            f"{100 * r['client_cpu_cores']:.0f} %",
        ])
    table = markdown_table(
        ["preset", "device Hz", "network", "playout buffer", "stated at start ms",
         "stated over the song p50 / p99 ms", "measured over the song p50 / p99 ms",
         "measured − stated per window: p50 / max abs ms", "JACK xruns /min",
         "live xrun callbacks /min", "underruns", "concealed / inserted blocks",
         "cut ms", "SDR vs file path per 1 s window, own lag: p50 / p1 dB",
         "SDR whole song, one lag dB", "client CPU"], rows)
    r0 = result["runs"][0] if result["runs"] else {}
    jk = result["jack"]
    head = (f"live through JACK (dummy driver, {r0.get('config', {}).get('jack_period', '?')}"
            f"-frame periods, {'sync' if jk['sync'] else 'async'} mode, "
            f"{'realtime' if r0.get('jackd', {}).get('realtime') else 'no-realtime'}), "
            f"monitor {result['monitor']}, "
            f"{result['audio']}\n"
            f"machine: {describe(result['machine'])}; load average before: "
            f"{result['load_before']}; after: {result['load_after']}\n"
            f"command: {result['command']}\n\n")
    return head + table


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    # a colour per preset and network, a line style and marker per device rate
    keys = list(dict.fromkeys((r["config"]["preset"], r["config"]["profile"])
                              for r in result["runs"]))
    rates = sorted({r["config"]["device_rate"] for r in result["runs"]})
    styles = [("-", "."), ("--", "x"), ("-.", "+")]
    for r in result["runs"]:
        c, w = r["config"], r["measured"]["windows"]
        ls, mk = styles[rates.index(c["device_rate"]) % len(styles)]
        line, = ax.plot(w["times_s"], w["latency_ms"], marker=mk, ls=ls, lw=1, ms=4,
                        color=f"C{keys.index((c['preset'], c['profile'])) % 10}",
                        label=f"{c['preset']} {c['device_rate']} Hz {c['profile']}")
        st = [(t, v) for t, v in zip(w["times_s"], w.get("stated_ms", []), strict=False)
              if v is not None]
        if st:
            ax.plot(*zip(*st, strict=True), ls=":", lw=0.8, color="k", alpha=0.6)
    ax.set_xlabel("song time (s)")
    ax.set_ylabel("input-to-output latency (ms)")
    ax.set_title("live through JACK: measured latency per 1 s window (dots), live's stated "
                 f"total then (black dotted)\n{describe(result['machine'])}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
