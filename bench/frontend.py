"""`stemlink bench frontend`: Python cost per media datagram at the server's front end.

- AUDIO in: what the server does with one valid AUDIO datagram before it queues the block
  for the worker: `decode_header` + `check_tag` (keyed BLAKE2s) + `read_media` (PCM ->
  float32 [C, n]).
- STEM out: what the worker does per stem and block: `MediaWriter.write` (float32 ->
  PCM, header, tag, the datagram's bytes).
- sendto: one `socket.sendto` of a 1076-byte datagram to a loopback socket (the system
  call the loop makes per STEM datagram), measured separately because it is kernel time,
  not Python.

Timed with `time.perf_counter_ns` over `iterations` calls, `repeats` times, interleaved
with the reference (first) implementation; the minimum of the repeats' means is the
figure (the least disturbed by other processes on a shared machine), the median is
recorded beside it. From those, the ceiling
of sessions one process's front end could carry if it did nothing else: a session sends
rate/block AUDIO datagrams per second and receives stems times as many STEM datagrams.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stemlink.bench import frontend_reference as ref
from stemlink.bench.machine import describe, machine
from stemlink.bench.stats import markdown_table, write_report
from stemlink.wire import packets as pk
from stemlink.wire.constants import PacketType, SampleFormat

SAMPLE_RATE = 44100
CHANNELS = 2
STEMS = 2
KEY = bytes(range(32))


def _time_pair(fns: dict[str, Callable[[], object]], iterations: int,
               repeats: int) -> dict[str, dict]:
    """Time each function `repeats` times, interleaved, so that load from other processes
    falls on all of them alike; µs per call: median and minimum of the repeats' means."""
    means: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter_ns()
            for _ in range(iterations):
                fn()
            means[k].append((time.perf_counter_ns() - t) / iterations / 1e3)
    return {k: {"median_us": statistics.median(v), "min_us": min(v)} for k, v in means.items()}


def _block(frames: int) -> np.ndarray:
    t = np.arange(frames) / SAMPLE_RATE
    x = 0.5 * np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t)
    return x.astype(np.float32)


def measure(fmt: SampleFormat, frames: int, iterations: int, repeats: int) -> dict:
    block = _block(frames)
    writers = {"reference": ref.MediaWriter(frames, CHANNELS, fmt),
               "current": pk.MediaWriter(frames, CHANNELS, fmt)}
    audio = writers["current"].write(PacketType.AUDIO, block, session=7, seq=1,
                                     timestamp=frames, send_time=123, key=KEY)
    out = np.zeros((CHANNELS, frames), np.float32)

    def audio_in(mod):
        def run() -> None:
            h = mod.decode_header(audio)
            if not mod.check_tag(audio, KEY):
                raise AssertionError("tag")
            mod.read_media(audio, h, out)
        return run

    def stem_out(w):
        def run() -> bytes:
            return w.write(PacketType.STEM, block, session=7, seq=1, timestamp=frames,
                           send_time=123, key=KEY, stem=1)
        return run

    a = _time_pair({"reference": audio_in(ref), "current": audio_in(pk)}, iterations,
                   repeats)
    s = _time_pair({k: stem_out(w) for k, w in writers.items()}, iterations, repeats)
    return {"format": fmt.name.lower(), "frames": frames, "datagram_bytes": len(audio),
            "audio_in": a, "stem_out": s}


def measure_sendto(iterations: int, repeats: int, size: int) -> dict:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        addr = rx.getsockname()
        data = bytes(size)
        done = [0]

        def send() -> None:
            tx.sendto(data, addr)
            done[0] += 1
            if done[0] % 64 == 0:  # drain so the kernel keeps queueing, not dropping
                try:
                    while True:
                        rx.recv(2048)
                except BlockingIOError:
                    pass

        return _time_pair({"sendto": send}, iterations, repeats)["sendto"]
    finally:
        rx.close()
        tx.close()


def ceiling(audio_us: float, stem_us: float, frames: int, stems: int = STEMS) -> int:
    """Sessions whose media datagrams one core could handle, doing nothing else."""
    per_s = SAMPLE_RATE / frames
    return int(1e6 / (per_s * (audio_us + stems * stem_us)))


def bench_frontend(iterations: int, repeats: int) -> dict:
    rows = [measure(fmt, frames, iterations, repeats)
            for fmt in (SampleFormat.S16LE, SampleFormat.F32LE) for frames in (256, 128)
            if frames * CHANNELS * fmt.width <= 1024]
    send = measure_sendto(iterations, repeats, rows[0]["datagram_bytes"])
    for r in rows:
        for impl in ("reference", "current"):
            a, s = r["audio_in"][impl]["min_us"], r["stem_out"][impl]["min_us"]
            r[f"ceiling_{impl}"] = ceiling(a, s, r["frames"])
            r[f"ceiling_{impl}_with_sendto"] = ceiling(a, s + send["min_us"], r["frames"])
    return {"benchmark": "frontend", "iterations": iterations, "repeats": repeats,
            "stems": STEMS, "sample_rate": SAMPLE_RATE, "sendto": send, "rows": rows,
            "machine": machine(), "command": "stemlink " + " ".join(sys.argv[1:])}


def render(r: dict) -> str:
    def us(x: dict) -> str:
        return f"{x['min_us']:.2f} ({x['median_us']:.2f})"

    rows = []
    for x in r["rows"]:
        for impl in ("reference", "current"):
            rows.append([x["format"], x["frames"], impl, us(x["audio_in"][impl]),
                         us(x["stem_out"][impl]), x[f"ceiling_{impl}"],
                         x[f"ceiling_{impl}_with_sendto"]])
    send = r["sendto"]
    return (f"front end per datagram, {describe(r['machine'])}\n"
            f"command: {r['command']}\n\n" + markdown_table(
                ["format", "frames", "hot path", "AUDIO in µs min (median)",
                 "STEM out µs min (median)", "sessions/core (Python)",
                 "sessions/core (+ sendto)"], rows) +
            f"\n\nsendto of one datagram on loopback: {send['min_us']:.2f} µs min "
            f"({send['median_us']:.2f} median). reference = the hot path as first written "
            f"(commit 46d62ef), timed interleaved with the current one. Sessions/core: "
            f"1 s / (rate/frames x (AUDIO in + {r['stems']} x STEM out)) from the minima, "
            f"front end only (no inference, no receive syscall).")


def save(r: dict, out: Path) -> None:
    write_report(out, "frontend", r, render(r))
