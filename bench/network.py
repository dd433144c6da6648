"""`stemlink bench network`: the stemlink server on impaired networks.

Each run starts a fresh server as a child process on loopback (so its CPU use and its
counters are its own), and, for impaired runs, a `stemlink relay` child in front of it.
Real-time `send` clients stream the same song. The first run is the undisturbed
reference (clients straight to the server); every other run goes through the relay with
one setting (a profile, an explicit relay spec, one loss rate of the grid, or one
dropout), and its stems are compared with the reference's by SDR
(`stemlink.bench.fidelity.sdr`), over the whole song and, for dropouts, from 2 s after
the dropout ends. With `--clients 2` only the first client goes through the relay; the
second goes straight to the server, to show whether one session's trouble reaches another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.bench import procs
from stemlink.bench.fidelity import sdr
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.errors import StemlinkError
from stemlink.percentiles import summarize

RECOVERY_S = 2.0  # dropout runs: SDR is also measured from this long after the dropout
PNG = "network.png"
# send options the harness sets itself
RESERVED_SEND_OPTS = {"input", "server", "out_dir", "realtime"}


@dataclass
class RunSpec:
    name: str
    relay_args: list[str] | None  # `stemlink relay` flags; None = straight to the server
    sdr_from_s: float | None = None
    send_opts: dict = dataclasses.field(default_factory=dict)  # this run's extra options


def with_redundancy(runs: list[RunSpec]) -> list[RunSpec]:
    """Every impaired run twice: without and with `send --redundancy`."""
    out = [runs[0]]
    for r in runs[1:]:
        out.append(dataclasses.replace(r, name=f"{r.name}, redundancy off",
                                       send_opts={**r.send_opts, "redundancy": False}))
        out.append(dataclasses.replace(r, name=f"{r.name}, redundancy on",
                                       send_opts={**r.send_opts, "redundancy": True}))
    return out


def plan_runs(profiles: list[str], specs: list[str], losses: list[float], burst: float,
              outages: list[tuple[float, float]], seed: int,
              sdr_from_s: float | None) -> list[RunSpec]:
    runs = [RunSpec("reference (direct)", None, sdr_from_s)]
    s = ["--seed", str(seed)]
    runs += [RunSpec(p, ["--profile", p, *s], sdr_from_s) for p in profiles]
    runs += [RunSpec(f"relay {sp}", [*shlex.split(sp), *s], sdr_from_s) for sp in specs]
    runs += [RunSpec(f"loss {100 * p:g} % (burst {burst:g})",
                     ["--loss", repr(p), "--burst", repr(burst), *s], sdr_from_s)
             for p in losses]
    runs += [RunSpec(f"dropout {n:g} s at {t:g} s",
                     ["--outage", repr(t), repr(n), *s], t + n + RECOVERY_S)
             for t, n in outages]
    return runs


def parse_send_opts(items: list[str]) -> dict:
    """KEY=VALUE pairs into SendOptions fields, converted by the field's declared type;
    an unknown or reserved key is one clear error."""
    from stemlink.udp_client.sender import SendOptions

    fields = {f.name: str(f.type) for f in dataclasses.fields(SendOptions)}
    usable = sorted(set(fields) - RESERVED_SEND_OPTS)
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise StemlinkError(f"--send-opt {item!r}: expected KEY=VALUE")
        if key in RESERVED_SEND_OPTS:
            raise StemlinkError(f"--send-opt {key}: set by the benchmark itself")
        if key not in fields:
            raise StemlinkError(f"--send-opt {key}: `send` has no such option (known: "
                                f"{', '.join(usable)})")
        out[key] = _convert(key, raw.strip(), fields[key])
        if key == "conceal" and out[key] is not None:
            from stemlink.conceal import METHODS

            if out[key] not in METHODS:
                raise StemlinkError(f"--send-opt conceal={raw}: not one of "
                                    f"{', '.join(METHODS)}")
    return out


def _convert(key: str, raw: str, typ: str):
    if "None" in typ and raw.lower() in ("none", ""):
        return None
    try:
        if typ.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ.startswith("int"):
            return int(raw)
        if typ.startswith("float"):
            return float(raw)
        if typ.startswith("bytes"):
            return raw.encode()
        if typ.startswith("str"):
            return raw
        if typ == "SampleFormat":
            from stemlink.wire.constants import SampleFormat

            return SampleFormat[raw.upper()]
    except (ValueError, KeyError):
        raise StemlinkError(f"--send-opt {key}={raw}: not a valid {typ}") from None
    raise StemlinkError(f"--send-opt {key}: options of type {typ} cannot be set here")


def prepare_audio(path: str | None, seconds: float | None, out: Path) -> tuple[Path, float]:
    """The song as 16-bit WAV (what every run sends), optionally looped or cut."""
    from stemlink.export.checkpoint import example_audio

    src = path or str(example_audio())
    x, sr = aio.read_audio(src)
    aio.sanitize(x)
    if seconds is not None:
        x = aio.loop_to(x, int(seconds * sr))
    aio.write_audio(out, x, sr, subtype="PCM_16")
    return out, x.shape[1] / sr


def _run_clients(wav: Path, addrs: list[tuple[str, int]], out_dirs: list[Path], preset: str,
                 send_opts: dict, realtime: bool = True) -> list:
    from stemlink.loop import run_loop
    from stemlink.udp_client.sender import SendOptions, send_file

    async def go():
        return await asyncio.gather(*[
            send_file(SendOptions(wav, a, d, preset=preset, realtime=realtime, **send_opts))
            for a, d in zip(addrs, out_dirs, strict=True)], return_exceptions=True)

    return run_loop(go())


def run_one(spec: RunSpec, model: str, wav: Path, clients: int, preset: str, backend: str,
            send_opts: dict, tmp: Path, index: int, sweep: list[str] | None = None,
            realtime: bool = True) -> dict:
    port = procs.free_port()
    server = procs.stemlink_server(model, port, preset, backend, tmp / f"server{index}.json")
    relay = None
    relay_cmd = None
    try:
        addrs = [("127.0.0.1", port)] * clients
        if spec.relay_args is not None:
            relay, rport, relay_cmd = procs.stemlink_relay(port, spec.relay_args,
                                                           tmp / f"relay{index}.json")
            addrs[0] = ("127.0.0.1", rport)
        dirs = [tmp / f"run{index}" / f"client{c}" for c in range(clients)]
        opts = {**send_opts, **spec.send_opts}
        if sweep and spec.relay_args is not None:
            opts["keep_raw"] = True
        reps = _run_clients(wav, addrs, dirs, preset, opts, realtime)
        cpu = server.cpu_use()
    finally:
        relay_stats = relay.stop() if relay is not None else None
        stats = server.stop()
    comp = np.asarray(stats.get("compute_ns", []), np.float64) / 1e6
    counters = stats.get("counters", {})
    return {
        "name": spec.name, "relay_command": relay_cmd, "sdr_from_s": spec.sdr_from_s,
        "clients": [_client(r, c, spec.relay_args is not None and c == 0, sweep, realtime)
                    for c, r in enumerate(reps)],
        "send_options": {k: v for k, v in spec.send_opts.items()},
        "stem_dirs": [str(d) for d in dirs],
        "server": {"cpu_cores": cpu, "counters": counters,
                   "inferences": counters.get("inferences"),
                   "compute_ms": {"blocks": int(comp.size), **summarize(comp)}},
        "relay": relay_stats,
    }


def _client(rep, index: int, impaired: bool, sweep: list[str] | None = None,
            realtime: bool = True) -> dict:
    if isinstance(rep, StemlinkError):  # e.g. the session was refused or never answered
        return {"client": index, "through_relay": impaired, "error": str(rep)}
    if isinstance(rep, BaseException):
        raise rep
    extra = {}
    if sweep and rep.raw is not None:  # the same arrivals under every policy
        from stemlink.udp_client.sender import replay

        extra["_sweep"] = {}
        modes = ("archival", "as-heard") if realtime else ("archival",)  # as heard: paced
        for method in sweep:
            for mode in modes:
                stems, info = replay(rep, method, mode == "as-heard")
                extra["_sweep"][(method, mode, True)] = (stems, info)
        for mode in modes:  # the default without the mixture repair
            stems, info = replay(rep, sweep[-1] if "match" not in sweep else "match",
                                 mode == "as-heard", mix_repair=False)
            extra["_sweep"][("match" if "match" in sweep else sweep[-1], mode, False)] = (
                stems, info)
        rep.raw = None
    return {"client": index, "through_relay": impaired, "preset": rep.preset,
            "recovered": rep.recovered, "cpu_percent": rep.cpu_percent,
            "cpu_ms_per_block": rep.cpu_ms_per_block, "repair": rep.repair, **extra,
            "delay_ms": 1000 * rep.delay / rep.sample_rate, "sent": rep.sent,
            "received": rep.received, "expected": rep.expected, "lost": rep.lost,
            "late": rep.late, "concealed": rep.concealed, "duplicates": rep.duplicates,
            "latency_ms": rep.latency_ms, "rtt_ms": rep.rtt_ms, "dropped": rep.dropped,
            "stems": rep.stems}


def _sdr_or_none(want: np.ndarray, est: np.ndarray) -> float | None:
    """SDR, or None where the reference is silent (nothing to compare with: the reference
    run itself lost those blocks) or the two are identical."""
    if not np.any(want):
        return None
    v = sdr(want, est)
    return v if np.isfinite(v) else None


def _add_sdr(run: dict, ref: dict, sr: int) -> None:
    import soundfile as sf

    for c, (cl, d, rd) in enumerate(zip(run["clients"], run["stem_dirs"], ref["stem_dirs"],
                                        strict=True)):
        if "error" in cl:
            continue
        full, tail = {}, {}
        for stem in cl["stems"]:
            est, _ = sf.read(Path(d) / f"{stem}.wav", dtype="float32", always_2d=True)
            want, _ = sf.read(Path(rd) / f"{stem}.wav", dtype="float32", always_2d=True)
            full[stem] = _sdr_or_none(want, est)
            if run["sdr_from_s"] is not None:
                k = int(run["sdr_from_s"] * sr)
                tail[stem] = _sdr_or_none(want[k:], est[k:])
        cl["sdr_db"] = full
        cl["sdr_from_db"] = tail or None
        if "_sweep" in cl:
            rows = []
            for (method, mode, repair), (stems, info) in cl.pop("_sweep").items():
                sd = {}
                for j, stem in enumerate(cl["stems"]):
                    want, _ = sf.read(Path(rd) / f"{stem}.wav", dtype="float32",
                                      always_2d=True)
                    est = stems[j].T
                    if est.shape != want.shape:  # other rate/channels: not comparable here
                        sd[stem] = None
                        continue
                    sd[stem] = _sdr_or_none(want, est)
                rows.append({"conceal": method, "mode": mode, "mix_repair": repair,
                             "sdr_db": sd, "concealed": info.get("concealed"),
                             **{k: info[k] for k in ("mean_delay_ms", "late", "inserted")
                                if k in info}})
            cl["sweep"] = rows
        run["clients"][c] = cl


def bench_network(model: str, audio: str | None, seconds: float | None, profiles: list[str],
                  specs: list[str], losses: list[float], burst: float,
                  outages: list[tuple[float, float]], clients: int, preset: str,
                  backend: str, seed: int, sdr_from_s: float | None, send_opts: dict,
                  out: Path, say=lambda s: None, sweep: list[str] | None = None,
                  compare_redundancy: bool = False, realtime: bool = True,
                  progress=None) -> dict:
    runs = plan_runs(profiles, specs, losses, burst, outages, seed, sdr_from_s)
    if compare_redundancy:
        runs = with_redundancy(runs)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        wav, duration = prepare_audio(audio, seconds, tmp / "song.wav")
        for r in runs:
            if r.sdr_from_s is not None and r.sdr_from_s >= duration - 0.5:
                raise StemlinkError(
                    f"{r.name}: SDR from {r.sdr_from_s:g} s needs a song longer than that "
                    f"(it is {duration:.1f} s; use --seconds)")
        sr = aio.read_audio(wav)[1]
        results = []
        for i, spec in enumerate(runs):
            if progress:
                progress(i, len(runs))
            say(f"[{i + 1}/{len(runs)}] {spec.name} ...")
            res = run_one(spec, model, wav, clients, preset, backend, send_opts, tmp, i, sweep,
                          realtime)
            if results:
                _add_sdr(res, results[0], sr)
            results.append(res)
        if progress:
            progress(len(runs), len(runs))
        for r in results:
            del r["stem_dirs"]
    result = {
        "benchmark": "network", "command": "stemlink " + shlex.join(sys.argv[1:]),
        "machine": machine(), "audio": Path(audio).name if audio else "audio_example.mp3",
        "seconds": duration, "clients": clients, "preset": preset, "backend": backend,
        "seed": seed, "send_options": {k: (v.decode() if isinstance(v, bytes) else
                                           getattr(v, "name", v))
                                       for k, v in send_opts.items()},
        "recovery_s": RECOVERY_S, "runs": results, "sweep": sweep or [],
        "paced": realtime,
    }
    write_report(out, "results", result, render(result))
    plot(result, out / PNG)
    if sweep:
        (out / "loss.md").write_text(render_sweep(result) + "\n")
        plot_sweep(result, out / SWEEP_PNG)
    return result


SWEEP_PNG = "loss.png"


def _sweep_rows(result: dict):
    for r in result["runs"][1:]:
        c = r["clients"][0]
        for row in c.get("sweep", []):
            yield r, c, row


def render_sweep(result: dict) -> str:
    """SDR against the undisturbed run for every concealment method, in both send modes,
    from the same arrivals of each run."""
    methods = result["sweep"]
    stems = result["runs"][0]["clients"][0].get("stems", [])
    table: dict = {}
    extra: dict = {}
    for r, c, row in _sweep_rows(result):
        key = (r["name"], row["mode"])
        table.setdefault(key, {})
        label = row["conceal"] + ("" if row["mix_repair"] else " (no mix repair)")
        table[key][label] = _fmt_sdr(row["sdr_db"], stems)
        ex = extra.setdefault(key, {"lost": c["lost"], "recovered": c.get("recovered", 0)})
        if row["mode"] == "as-heard" and row["conceal"] == methods[-1] and row["mix_repair"]:
            ex["delay"] = row.get("mean_delay_ms")
            ex["late"] = row.get("late")
    labels = [*methods, ("match" if "match" in methods else methods[-1]) + " (no mix repair)"]
    rows = []
    for (name, mode), cols in table.items():
        ex = extra[(name, mode)]
        rows.append([name, mode, ex["lost"], ex["recovered"],
                     *[cols.get(lb, "–") for lb in labels],
                     "–" if ex.get("delay") is None else f"{ex['delay']:.1f}"])
    head = ["run", "send mode", "stem blocks lost", "repaired (redundancy)",
            *[f"{lb}: SDR dB ({' / '.join(stems)})" for lb in labels],
            "as-heard mean buffer ms"]
    pacing = ("paced in real time" if result.get("paced", True) else
              "unpaced: as fast as the server allows, so nothing is late and only the "
              "archival mode applies")
    return (f"loss and concealment: {result['audio']} ({result['seconds']:.1f} s), preset "
            f"{result['preset']}, seed {result['seed']}\nmachine: "
            f"{describe(result['machine'])}\ncommand: {result['command']}\n\n"
            f"{markdown_table(head, rows)}\n\nEach run streams once ({pacing}); every "
            "column replays that run's arrivals under one client policy (concealment "
            "method; archival = every block that arrived, as-heard = the adaptive playout "
            "buffer on the same audio clock). The server conceals lost input with its "
            "default (match) in every run.")


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stems = result["runs"][0]["clients"][0].get("stems", [])
    methods = result["sweep"]
    series: dict = {}
    for r, _c, row in _sweep_rows(result):
        if not row["mix_repair"]:
            continue
        red = "redundancy on" in r["name"]
        loss = r["name"].split(",")[0]
        for stem in stems:
            v = row["sdr_db"].get(stem)
            series.setdefault((stem, row["mode"], red, row["conceal"]), []).append(
                (loss, np.nan if v is None else min(v, 60)))
    if not series:
        return
    modes = [m for m in ("archival", "as-heard") if any(k[1] == m for k in series)]
    fig, axes = plt.subplots(len(stems), len(modes), figsize=(6 * len(modes) + 1,
                                                              3.4 * len(stems)),
                             dpi=110, squeeze=False)
    for i, stem in enumerate(stems):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for red in (False, True):
                for m in methods:
                    pts = series.get((stem, mode, red, m), [])
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts],
                                "-o" if red else "--s", ms=3,
                                label=f"{m}{', redundancy' if red else ''}")
            ax.set_title(f"{stem}, send {mode}", fontsize=9)
            ax.set_ylabel("SDR vs undisturbed run (dB, cap 60)")
            ax.grid(True, alpha=0.3)
            ax.tick_params(axis="x", labelsize=7)
            ax.axhline(14, color="grey", lw=0.6)
            ax.axhline(22, color="grey", lw=0.6)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"loss and concealment: {result['audio']}, preset {result['preset']}\n"
                 f"{describe(result['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_sdr(d: dict | None, stems: list[str]) -> str:
    return " / ".join("n/a" if d[s] is None else f"{d[s]:.1f}" for s in stems) if d else "–"


def hole_inferences(result: dict, run: dict) -> float | None:
    """Inferences a run spent beyond what the audio that reached the server needs: its
    inferences minus the reference's rate per block times the blocks the server got
    (sent minus the hole the worker concealed or jumped). ~0 when a dropout costs no
    inference; the server's own counters, so None for servers that do not report them."""
    ref, c = result["runs"][0]["server"], run["server"]["counters"]
    sent = sum(x.get("sent", 0) for x in result["runs"][0]["clients"])
    if ref["inferences"] is None or run["server"]["inferences"] is None or not sent:
        return None
    hole = c.get("stream_gap_jumped_blocks", 0) + c.get("stream_concealed_input_blocks", 0)
    got = sum(x.get("sent", 0) for x in run["clients"]) - hole
    return run["server"]["inferences"] - ref["inferences"] / sent * got


def render(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        srv = r["server"]
        inf = srv["inferences"] if srv["inferences"] is not None else srv["compute_ms"]["blocks"]
        extra = hole_inferences(result, r)
        if extra is not None:
            inf = f"{inf} ({extra:+.1f})"
        rel = r["relay"] or {}
        drop = (f"{rel['up']['dropped']} / {rel['down']['dropped']}" if rel else "–")
        for c in r["clients"]:
            if "error" in c:
                rows.append([r["name"], c["client"], f"failed: {c['error']}"] + [""] * 11)
                continue
            lat = c["latency_ms"]
            rows.append([
                r["name"], f"{c['client']}{' (relay)' if c['through_relay'] else ''}",
                c["sent"], f"{c['received']}/{c['expected']}", c["lost"], c["late"],
                c["concealed"], f"{lat['p50']:.1f}", f"{lat['p99']:.1f}",
                _fmt_sdr(c.get("sdr_db"), c["stems"]),
                (f"{_fmt_sdr(c['sdr_from_db'], c['stems'])} (from {r['sdr_from_s']:g} s)"
                 if c.get("sdr_from_db") else "–"),
                f"{100 * srv['cpu_cores']:.0f} %", inf, drop])
    stems = result["runs"][0]["clients"][0].get("stems", ["?"])
    table = markdown_table(
        ["run", "client", "blocks sent", "stem blocks received", "lost", "late", "concealed",
         "e2e p50 ms", "e2e p99 ms", f"SDR dB ({' / '.join(stems)})", "SDR dB after",
         "server CPU", "inferences (beyond the audio received)"
         if any(r["server"]["inferences"] is not None for r in result["runs"])
         else "compute blocks",
         "relay dropped up / down"], rows)
    ref = result["runs"][0]["clients"]
    bad = [f"client {c['client']}: {c.get('error') or ''}{c.get('lost', 0)} lost, "
           f"{c.get('concealed', 0)} concealed" for c in ref
           if "error" in c or c["lost"] or c["concealed"]]
    warn = ("\nWARNING: the reference run was not clean (" + "; ".join(bad) + "): the SDR "
            "figures compare against damaged stems; rerun on a quieter machine.\n"
            if bad else "")
    relays = "\n".join(f"- {r['name']}: `{r['relay_command']}`" for r in result["runs"]
                       if r["relay_command"])
    opts = result["send_options"]
    return (f"impaired networks: {result['audio']} ({result['seconds']:.1f} s), "
            f"{result['clients']} client(s), preset {result['preset']}, backend "
            f"{result['backend']}, seed {result['seed']}"
            f"{', send options ' + str(opts) if opts else ''}\n"
            f"machine: {describe(result['machine'])}\ncommand: {result['command']}\n\n"
            f"{table}\n\nSDR is against the reference run's stems (same client index); "
            f"'late' counts stem blocks later than the client's playout budget.\n{warn}"
            f"relay commands (ports are per run):\n{relays}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"][1:] if "error" not in r["clients"][0]]
    stems = result["runs"][0]["clients"][0].get("stems", [])
    if not runs or not stems:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(runs) + 3.5), dpi=110)
    y = np.arange(len(runs))
    h = 0.8 / (2 * len(stems))
    for j, stem in enumerate(stems):
        full = [min(r["clients"][0]["sdr_db"][stem] or np.nan, 80) for r in runs]
        a1.barh(y + (2 * j) * h, full, h, label=f"{stem}, whole song")
        tail = [min((r["clients"][0]["sdr_from_db"] or {}).get(stem) or np.nan, 80)
                for r in runs]
        a1.barh(y + (2 * j + 1) * h, tail, h,
                label=f"{stem}, after the dropout (+{RECOVERY_S:g} s) / --sdr-from")
    a1.set_yticks(y + 0.4 - h / 2, [r["name"] for r in runs], fontsize=8)
    a1.set_xlabel("SDR vs undisturbed run (dB, capped at 80)")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    a1.grid(True, axis="x", alpha=0.3)
    for k, key in enumerate(("lost", "late", "concealed")):
        a2.barh(y + k * 0.27, [r["clients"][0][key] for r in runs], 0.27, label=key)
    a2.set_yticks(y + 0.27, [""] * len(runs))
    a2.set_xlabel("stem blocks (client 0)")
    a2.legend(fontsize=7)
    a2.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"stemlink through the impairment relay: {result['audio']}, preset "
                 f"{result['preset']}\n{describe(result['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
