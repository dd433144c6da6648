"""`stemlink bench playout`: fixed against adaptive playout buffer, on simulated arrivals.

Sans-IO and deterministic: STEM blocks leave a modelled server (one block per block
period, plus an inference every `every` blocks that holds the queue for `compute_ms`,
varying +-30 %) and cross the relay's own impairment model (`bench.relay.Impairment`,
the calibrated `wifi` profile, or a profile whose jitter steps up halfway). They are
pushed into `udp_client.jitter.JitterBuffer` at their arrival times and popped on the
audio clock, one device period at a time — the same buffer `live` and `send --as-heard`
use. No sockets and no wall clock, so the figures do not depend on the machine's load.

Reported per buffer: mean added delay (mean E), stem blocks concealed (lost + late),
late blocks (and how many after the step), blocks inserted, and the time to adapt after
the step: until the buffer's delay first covers 99.9 % of the new regime's arrivals.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import numpy as np

from stemlink.bench.machine import describe, machine
from stemlink.bench.relay import PROFILES, Impairment, LinkSpec
from stemlink.bench.stats import markdown_table, write_report
from stemlink.udp_client.jitter import JitterBuffer, JitterConfig

SR = 44100
PNG = "playout.png"


def arrivals(spec: LinkSpec, step_spec: LinkSpec | None, seconds: float, block: int,
             every: int, compute_ms: float, seed: int) -> list[tuple[float, int]]:
    """(arrival time s, block index) of one stem's blocks; lost ones are absent."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR / block)
    half = n // 2
    links = [Impairment(spec, seed, "down"),
             Impairment(step_spec or spec, seed + 1, "down")]
    out, done = [], 0.0
    for k in range(n):
        ready = (k + 1) * block / SR  # the input block is complete at the client ...
        work = 0.0002
        if k % every == 0:  # ... and an inference holds the server's queue
            work += compute_ms / 1000 * rng.uniform(0.7, 1.3)
        done = max(ready, done) + work
        link = links[0] if k < half else links[1]
        for rel in link.feed(b"", done, k):
            out.append((rel.time, rel.meta))
        for rel in link.poll(done):
            out.append((rel.time, rel.meta))
    out.sort()
    return out


def simulate(arr: list[tuple[float, int]], n_blocks: int, cfg: JitterConfig, block: int,
             period: int, step_s: float | None) -> dict:
    jb = JitterBuffer(1, 1, block, SR, cfg, conceal="zero")
    x = np.zeros((1, block), np.float32)
    buf = np.zeros((1, 1, period), np.float32)
    i, trace = 0, []
    late_times = []
    p = 0
    while jb.play is None or jb.play < n_blocks * block:
        now = (p + 1) * period / SR
        while i < len(arr) and arr[i][0] <= now:
            before = jb.stats.late
            jb.push(0, arr[i][1] * block, x, arr[i][0])
            if jb.stats.late > before:
                late_times.append(arr[i][0])
            i += 1
        jb.pop(buf, now)
        if p % 16 == 0:
            trace.append((now, jb.delay_ms(now), jb.target_ms))
        p += 1
        if i >= len(arr) and jb.play is None:
            break
    st = jb.stats
    adapt = late_after = None
    if step_s is not None:
        # what the new regime needs: 99.9 % of its blocks' delays behind the fastest path
        d = np.array([t - (k + 1) * block / SR for t, k in arr])
        ks = np.array([k for _, k in arr])
        need = 1000 * (np.quantile(d[ks >= n_blocks // 2], 0.999) - d.min())
        tr = np.array(trace)
        ok = tr[(tr[:, 0] >= step_s) & (tr[:, 1] >= need)]
        adapt = float(ok[0, 0] - step_s) if len(ok) else None
        late_after = sum(1 for a in late_times if a >= step_s)
    return {"mean_delay_ms": st.mean_delay_ms, "concealed": st.concealed, "late": st.late,
            "inserted": st.inserted, "cut_ms": 1000 * st.cut_samples / SR,
            "target_max_ms": st.target_max_ms, "time_to_adapt_s": adapt,
            "late_after_step": late_after,
            "trace": trace}


def bench_playout(profiles: list[str], step_jitter_ms: float, seconds: float, fixed_ms:
                  list[float], block: int, period: int, every: int, compute_ms: float,
                  seed: int, out: Path) -> dict:
    scen = [(p, PROFILES[p], None) for p in profiles]
    base = PROFILES["wifi"]
    scen.append((f"wifi, jitter steps to {step_jitter_ms:g} ms at {seconds / 2:g} s", base,
                 dataclasses.replace(base, jitter_ms=step_jitter_ms)))
    results = []
    n = int(seconds * SR / block)
    for name, spec, step in scen:
        arr = arrivals(spec, step, seconds, block, every, compute_ms, seed)
        step_s = (n // 2) * block / SR if step is not None else None
        for label, cfg in [("adaptive", JitterConfig())] + [
                (f"fixed {f:g} ms", JitterConfig(fixed_ms=f)) for f in fixed_ms]:
            r = simulate(arr, n, cfg, block, period, step_s)
            results.append({"scenario": name, "buffer": label,
                            "lost": n - len({k for _, k in arr}), **r})
    res = {"benchmark": "playout", "command": "stemlink " + shlex.join(sys.argv[1:]),
           "machine": machine(), "seconds": seconds, "block": block, "period": period,
           "server_model": {"inference_every_blocks": every, "compute_ms": compute_ms},
           "seed": seed, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    slim = {**res, "results": [{k: v for k, v in r.items() if k != "trace"}
                               for r in results]}
    write_report(out, "results", slim, render(res))
    plot(res, out / PNG)
    return res


def render(res: dict) -> str:
    rows = []
    for r in res["results"]:
        rows.append([r["scenario"], r["buffer"], f"{r['mean_delay_ms']:.1f}",
                     f"{r['target_max_ms']:.1f}" if r["buffer"] == "adaptive" else "–",
                     r["lost"], r["late"], r["concealed"], r["inserted"], f"{r['cut_ms']:.0f}",
                     "–" if r["late_after_step"] is None else r["late_after_step"],
                     ("–" if "step" not in r["scenario"] else "never"
                      if r["time_to_adapt_s"] is None else f"{r['time_to_adapt_s']:.2f}")])
    head = ["arrivals", "buffer", "mean added delay ms", "max target ms", "lost", "late",
            "concealed (lost + late)", "inserted blocks", "cut ms", "late after the step",
            "time to adapt s"]
    sm = res["server_model"]
    return (f"playout buffers on simulated arrivals: {res['seconds']:g} s, block "
            f"{res['block']}, popped every {res['period']} samples; server model: an "
            f"inference every {sm['inference_every_blocks']} blocks taking "
            f"{sm['compute_ms']:g} ms +-30 %; seed {res['seed']}\n"
            f"machine: {describe(res['machine'])} (simulation: load-independent)\n"
            f"command: {res['command']}\n\n{markdown_table(head, rows)}\n\n"
            "time to adapt: from the jitter step until the buffer's delay first covers 99.9 % "
            "of the new regime's arrivals (never: a fixed buffer that is too small).")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = list(dict.fromkeys(r["scenario"] for r in res["results"]))
    fig, axes = plt.subplots(len(scen), 1, figsize=(10, 3 * len(scen)), dpi=110,
                             squeeze=False)
    for ax, s in zip(axes[:, 0], scen, strict=True):
        for r in res["results"]:
            if r["scenario"] != s:
                continue
            tr = np.array(r["trace"])
            ax.plot(tr[:, 0], tr[:, 1], lw=0.8,
                    label=f"{r['buffer']}: E (late {r['late']}, concealed {r['concealed']})")
            if r["buffer"] == "adaptive":
                ax.plot(tr[:, 0], tr[:, 2], lw=0.6, ls="--", label="adaptive: target")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("s")
        ax.set_ylabel("buffer delay ms")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"fixed vs adaptive playout buffer (simulated arrivals)\n"
                 f"{describe(res['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
