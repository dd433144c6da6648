"""`stemlink bench soak`: N clients stream in real time for many minutes, session after
session, against a server child process; its RSS and open sessions are sampled.

Each client sends a clip (the example, repeated to `--clip-seconds`) in real time, says BYE,
and starts a new session at once, so sessions open and close all the time as well as
stream. A leak shows as RSS that keeps growing from sample to sample."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from stemlink.bench.fuzz import metrics, start_server
from stemlink.loop import run_loop


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _soak(server, key: bytes, clip: Path, clients: int, seconds: float, pid: int,
                mport: int, every: float, say) -> dict:
    from stemlink.udp_client.sender import SendOptions, send_file

    t0 = time.monotonic()
    stop = t0 + seconds
    totals = {"sessions": 0, "received": 0, "expected": 0, "lost": 0, "late": 0,
              "failed": 0}
    samples = []

    async def client(i: int) -> None:
        while time.monotonic() < stop:
            try:
                rep = await send_file(SendOptions(clip, server, None, key=key))
            except Exception as e:  # counted: the soak goes on, the report shows it
                totals["failed"] += 1
                say(f"client {i}: session failed: {e}")
                await asyncio.sleep(1.0)
                continue
            totals["sessions"] += 1
            for k in ("received", "expected", "lost", "late"):
                totals[k] += getattr(rep, k)

    async def sampler() -> None:
        while True:
            m = metrics(mport)
            s = {"t": round(time.monotonic() - t0, 1), "rss_mib": round(rss_bytes(pid) / 2**20,
                                                                         1),
                 "sessions_open": int(m.get("stemlink_sessions_open", 0))}
            samples.append(s)
            say(f"t={s['t']} s RSS {s['rss_mib']} MiB, sessions open {s['sessions_open']}, "
                f"sessions done {totals['sessions']}")
            if time.monotonic() >= stop:
                return
            await asyncio.sleep(every)

    smp = asyncio.create_task(sampler())
    await asyncio.gather(*[client(i) for i in range(clients)])
    await smp
    return {"samples": samples, "clients": totals}


def soak(model: str, clients: int, minutes: float, clip_seconds: float, every: float,
         say=print) -> dict:
    import numpy as np
    import soundfile as sf

    from stemlink.audio import read_audio
    from stemlink.bench.machine import describe, machine
    from stemlink.export.checkpoint import example_audio
    from stemlink.wire.keys import generate_key_file, load_key_file

    tmp = Path(tempfile.mkdtemp(prefix="stemlink-soak-"))
    key_file = generate_key_file(tmp / "key")
    x, sr = read_audio(example_audio())
    clip = tmp / "clip.wav"
    n = int(clip_seconds * sr)
    reps = -(-n // x.shape[1])  # the example is ~10 s: repeat it to the clip's length
    sf.write(clip, np.tile(x, (1, reps))[:, :n].T, sr, subtype="PCM_16")
    child, server, mport = start_server(model, key_file, tmp / "stats.json")
    pid = child.proc.pid
    rss_ready = rss_bytes(pid)
    try:
        r = run_loop(_soak(server, load_key_file(key_file), clip, clients, minutes * 60,
                           pid, mport, every, say))
        m = metrics(mport)
    finally:
        child.stop()
    s = r["samples"]
    return {
        "command": f"stemlink bench soak --clients {clients} --minutes {minutes:g} "
                   f"--clip-seconds {clip_seconds:g}",
        "machine": describe(machine()), "load_average": [round(x, 2) for x in os.getloadavg()],
        "clients": clients, "minutes": minutes, "rss_ready_mib": round(rss_ready / 2**20, 1),
        "rss_start_mib": s[0]["rss_mib"], "rss_end_mib": s[-1]["rss_mib"],
        "rss_max_mib": max(x["rss_mib"] for x in s),
        "rss_after_first_minute_mib": next((x["rss_mib"] for x in s if x["t"] >= 60),
                                           s[-1]["rss_mib"]),
        "sessions_open_max": max(x["sessions_open"] for x in s),
        "client_totals": r["clients"],
        "server_sessions_started": int(m.get('stemlink_packets_accepted_total{type="hello"}',
                                             0)),
        "server_drops": {k.split('"')[1]: int(v) for k, v in m.items()
                         if k.startswith("stemlink_drops_total")},
        "samples": s,
    }


def render(r: dict) -> str:
    c = r["client_totals"]
    return "\n".join([
        f"command: {r['command']}",
        f"machine: {r['machine']}, load average at the end {r['load_average']}",
        f"server RSS: ready {r['rss_ready_mib']} MiB, first sample {r['rss_start_mib']} MiB, "
        f"after 1 min {r['rss_after_first_minute_mib']} MiB, end {r['rss_end_mib']} MiB, "
        f"max {r['rss_max_mib']} MiB",
        f"sessions: {c['sessions']} completed ({c['failed']} failed), at most "
        f"{r['sessions_open_max']} open at once",
        f"stem blocks: received {c['received']}/{c['expected']}, lost {c['lost']}, "
        f"late {c['late']}",
        "server drops: " + (", ".join(f"{k} {v}" for k, v in r["server_drops"].items())
                            or "none"),
    ])


def save(r: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(r, indent=2) + "\n")
