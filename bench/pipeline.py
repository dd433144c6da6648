"""`stemlink bench pipeline`: the server's CPU per input block outside the model.

One session through the real sans-IO server, in one thread, with no sockets: the
ServerCore takes each AUDIO datagram (header, tag, replay window, reorder window, input
ring; with redundancy also the uplink's parity datagrams and their decoder), the Worker
schedules the job, the session's StreamingSeparator stages each window (STFT), applies
the masks and synthesises (iSTFT), and the Stream writes the STEM datagrams (PCM, header,
tag; with redundancy their parity). Only the model's run is left out: the engine's
backend returns its output buffer as it is, so the masks are whatever it holds. What is
measured is what a GPU does not take off the server's CPU, per session: the ceiling on
sessions per core it gives is an upper bound (no receive or send system calls, no event
loop, no other thread).

CPU time (`time.process_time`) over `blocks` blocks, `repeats` times; the minimum is the
figure (the least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.wire import packets as pk
from stemlink.wire.constants import Features

ADDR = ("127.0.0.1", 40000)
BLOCK = 256
START_S = 100.0  # the sans-IO clock's origin


@dataclass(frozen=True)
class Setting:
    label: str
    preset: str
    hop_frames: int | None = None  # None: the preset's (CPU) choice
    redundancy: bool = False


SETTINGS = (
    Setting("monitor, H = 1 (as on a GPU)", "monitor", 1),
    Setting("monitor, H = 1, redundancy", "monitor", 1, True),
    Setting("monitor, H = 2 (CPU preset)", "monitor"),
    Setting("ultra (CPU preset)", "ultra"),
    Setting("extreme (CPU preset)", "extreme"),
)


def _session(engine, setting: Setting):
    from stemlink.udp_client.core import ClientCore
    from stemlink.udp_server.core import ServerCore
    from stemlink.udp_server.server import make_stream_factory
    from stemlink.udp_server.worker import Worker

    card = engine.card
    core = ServerCore(card_stems=card.stems, model_name=card.name,
                      sample_rate=card.sample_rate, channels=card.channels,
                      make_stream=make_stream_factory(engine, setting.preset))
    reports: list = []
    worker = Worker(reports.extend, backend=engine.backend)
    client = ClientCore(sample_rate=card.sample_rate, channels=card.channels,
                        preset=setting.preset, hop_frames=setting.hop_frames,
                        playout_ms=pk.ARCHIVAL,
                        features=int(Features.REDUNDANCY) if setting.redundancy else 0)
    now = START_S
    core.receive_datagram(client.connect(now), ADDR, now)
    for d, _ in core.take_outbox():
        for kind, reply in client.receive(d, now):
            if kind == "send":
                core.receive_datagram(reply, ADDR, now)
    for d, _ in core.take_outbox():
        client.receive(d, now)
    for m in core.take_messages():
        worker.handle_message(m)
    return core, worker, reports, client


def measure(engine, setting: Setting, blocks: int, repeats: int) -> dict:
    from stemlink.udp_server.worker import Output

    rate = engine.card.sample_rate
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal((engine.card.channels, blocks * BLOCK))
             ).astype(np.float32)
    runs, inferences, stem_datagrams = [], 0, 0
    for _ in range(repeats):
        core, worker, reports, client = _session(engine, setting)
        dgs = [client.audio_datagrams(audio[:, k * BLOCK:(k + 1) * BLOCK], k * BLOCK, 0)
               for k in range(blocks)]
        sid = next(iter(worker.scheduler.streams))
        stream = worker.scheduler.streams[sid]
        now, sent = START_S, 0
        t = time.process_time()
        for k in range(blocks):
            now += BLOCK / rate
            for d in dgs[k]:
                core.receive_datagram(d, ADDR, now)
            for m in core.take_messages():
                worker.handle_message(m)
            while worker.wait_time(worker.clock()) == 0.0:
                worker.step(worker.clock())
            for r in reports:
                if isinstance(r, Output):
                    core.deliver(r.session, r.datagrams)
            reports.clear()
            sent += len(core.take_outbox())
        runs.append((time.process_time() - t) / blocks * 1e6)
        inferences, stem_datagrams = stream.sep.stats.inferences, sent
    us = min(runs)
    return {"setting": setting.label, "preset": setting.preset,
            "hop_frames": setting.hop_frames, "redundancy": setting.redundancy,
            "blocks": blocks, "inferences": inferences, "stem_datagrams": stem_datagrams,
            "us_per_block_min": us, "us_per_block_runs": runs,
            "sessions_per_core": 1e6 / (us * rate / BLOCK)}


def bench_pipeline(model: str, blocks: int, repeats: int) -> dict:
    from stemlink.engine.session import open_engine

    engine = open_engine(model, "cpu")
    be = engine.backend
    try:
        # the model is left out: every inference returns the output buffer as it stands
        be.infer = lambda new_frames=None: be.outputs
        be.infer_first = lambda n: be.outputs
        rows = [measure(engine, s, blocks, repeats) for s in SETTINGS]
    finally:
        be.deactivate()
    return {"benchmark": "pipeline", "blocks": blocks, "repeats": repeats, "rows": rows,
            "machine": machine(), "command": "stemlink " + " ".join(sys.argv[1:])}


def render(r: dict) -> str:
    rows = [[x["setting"], x["inferences"], x["stem_datagrams"],
             f"{x['us_per_block_min']:.1f}", f"{x['sessions_per_core']:.0f}"]
            for x in r["rows"]]
    return (f"server CPU per input block outside the model, {describe(r['machine'])}\n"
            f"command: {r['command']}\n\n" + markdown_table(
                ["setting", "inferences", "STEM datagrams", "µs per block (min)",
                 "sessions per core (upper bound)"], rows) +
            f"\n\n{r['blocks']} blocks of {BLOCK} frames per run, min of {r['repeats']} runs; "
            "the real ServerCore, Worker, streaming separator and Stream, with the model's "
            "run left out and no sockets: what a GPU does not take off the server's CPU.")


def save(r: dict, out: Path) -> None:
    write_report(out, "pipeline", r, render(r))
