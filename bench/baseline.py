# no `from __future__ import annotations`: FastAPI resolves the handler's annotations at run time
"""The user's blueprint (shared/seed/blueprint.txt), faithfully: a FastAPI WebSocket server
taking a JSON config first, PCM16 frames of 2048 samples, a 1.0 s window with 50 % hop,
Hann overlap-add exactly as written, and a JSON header then a binary payload per stem; and
its client. Two changes: the fake high-pass separator is replaced by the same Spleeter model
through stemlink.engine, so that only the architecture differs; and the client reads
replies as they arrive. The blueprint drains with `asyncio.wait_for(ws.recv(), timeout=0)`
after each frame, which on Python 3.11 times out before recv() can run, so it would read
nothing until the stream ends; measuring that bug would flatter stemlink, not inform.

Audio is 44.1 kHz stereo (the model's), interleaved s16 in each 2048-sample frame.
"""


import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

FRAME_SAMPLES = 2048
WINDOW_SECONDS = 1.0


def build_app(model: str, backend: str = "cpu", compute_ns: list | None = None,
              stats_path: str | None = None):
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from fastapi.websockets import WebSocketState

    from stemlink.engine.families import separate_offline
    from stemlink.engine.session import open_engine

    engine = open_engine(model, backend)
    card = engine.card
    sr, ch = card.sample_rate, card.channels
    window = int(sr * WINDOW_SECONDS)
    hop = window // 2
    hann = np.hanning(window).astype(np.float32)
    timings = compute_ns if compute_ns is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if stats_path:  # graceful shutdown (SIGTERM) runs this; uvicorn re-raises after
            with open(stats_path, "w") as f:
                json.dump({"compute_ns": timings}, f)

    app = FastAPI(lifespan=lifespan)

    def process_window(audio: np.ndarray) -> dict[str, np.ndarray]:
        # blueprint: "run model inference on the window"; here the real model on the 1 s
        # window (its STFT frames in the model's fixed-shape segments)
        t = time.perf_counter_ns()
        stems = separate_offline(card, engine.backend, audio)
        timings.append(time.perf_counter_ns() - t)
        return dict(zip(card.stems, stems, strict=True))

    @app.websocket("/ws/separate")
    async def ws_separate(ws: WebSocket):
        await ws.accept()
        input_buffer = np.zeros((ch, 0), dtype=np.float32)
        overlap_cache: dict[str, np.ndarray] = {}
        seq_out = 0
        try:
            json.loads(await ws.receive_text())
        except Exception:
            await ws.close(code=1002)
            return

        async def send_chunk(stem: str, seq: int, chunk: np.ndarray):
            header = json.dumps({"stem": stem, "seq": seq, "samples": int(chunk.shape[1])})
            await ws.send_text(header)
            pcm = (np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2").T.tobytes()
            await ws.send_bytes(pcm)

        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    pcm = msg["bytes"]
                    if len(pcm) == 0:
                        continue
                    audio = (np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0)
                    audio = audio.reshape(-1, ch).T
                    input_buffer = np.concatenate([input_buffer, audio], axis=1)
                    while input_buffer.shape[1] >= window:
                        win = input_buffer[:, :window]
                        input_buffer = input_buffer[:, hop:]
                        stems = process_window(win)
                        for name, stem_audio in stems.items():
                            stem_audio = stem_audio.astype(np.float32) * hann
                            prev = overlap_cache.get(name)
                            if prev is None or prev.shape[1] != window:
                                prev = np.zeros((ch, window), dtype=np.float32)
                            first_half = stem_audio[:, :hop] + prev[:, hop:]
                            await send_chunk(name, seq_out, first_half)
                            overlap_cache[name] = stem_audio
                        seq_out += 1
                elif msg.get("text") is not None:
                    if json.loads(msg["text"]).get("cmd") == "stop":
                        break
        except WebSocketDisconnect:
            pass
        finally:
            if ws.application_state != WebSocketState.DISCONNECTED:
                await ws.close()

    app.state.window, app.state.hop = window, hop
    return app


@dataclass
class BaselineRun:
    t0_ns: int = 0  # capture clock origin: frame f is complete at t0 + (f+1)*F/sr
    sr: int = 44100
    send_ns: list = field(default_factory=list)  # per input frame, when it was sent
    arrivals: dict = field(default_factory=dict)  # stem -> list of (seq, samples, ns)
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0


async def run_client(url: str, audio: np.ndarray, sr: int, realtime: bool = True,
                     tail_s: float = 2.5) -> BaselineRun:
    """The blueprint's client loop over a file instead of a microphone: send a frame (paced
    like a capture device), then drain whatever replies are ready."""
    import websockets

    run = BaselineRun(sr=sr)
    ch, n = audio.shape
    nframes = -(-n // FRAME_SAMPLES)
    padded = np.zeros((ch, nframes * FRAME_SAMPLES), np.float32)
    padded[:, :n] = audio
    async with websockets.connect(url, max_size=None) as ws:
        cfg = json.dumps({"sample_rate": sr, "channels": ch})
        await ws.send(cfg)
        run.bytes_sent += len(cfg)
        expected = 0  # output chunks per stem the server will produce
        done = asyncio.Event()

        async def reader() -> None:
            pending_header = None
            async for msg in ws:
                now = time.monotonic_ns()
                run.messages += 1
                run.bytes_received += len(msg)
                if isinstance(msg, str):
                    pending_header = json.loads(msg)
                elif pending_header is not None:
                    h = pending_header
                    got = run.arrivals.setdefault(h["stem"], [])
                    got.append((h["seq"], h["samples"], now))
                    pending_header = None
                    if expected and all(len(v) >= expected for v in run.arrivals.values()):
                        done.set()

        task = asyncio.create_task(reader())
        run.t0_ns = time.monotonic_ns()
        t0 = run.t0_ns / 1e9
        for k in range(nframes):
            if realtime:  # like a capture device: a frame leaves once it is complete
                due = t0 + (k + 1) * FRAME_SAMPLES / sr
                while (d := due - time.monotonic()) > 0:
                    await asyncio.sleep(d)
            frame = padded[:, k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES]
            pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").T.tobytes()
            run.send_ns.append(time.monotonic_ns())
            await ws.send(pcm)
            run.bytes_sent += len(pcm)
        window = int(sr * WINDOW_SECONDS)
        expected = max(0, (nframes * FRAME_SAMPLES - window) // (window // 2) + 1)
        if expected and run.arrivals and all(len(v) >= expected for v in run.arrivals.values()):
            done.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), tail_s)
        await ws.send(json.dumps({"cmd": "stop"}))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return run


def block_latencies(run: BaselineRun, n: int, hop: int, block: int) -> list[float]:
    """End-to-end latency per input block of `block` samples: from the capture of its last
    sample (t0 + (b+1)*block/sr, the same clock as stemlink's client) to the arrival of
    the last output chunk holding its samples. Output chunk seq k holds input samples
    [k*hop, (k+1)*hop) (the blueprint's overlap-add). Waiting for a 2048-sample frame
    to fill is part of the latency, as it is for a musician."""
    stems = list(run.arrivals)
    arrival = {}
    for s in stems:
        for seq, _, ns in run.arrivals[s]:
            arrival[(s, seq)] = ns
    out = []
    for b in range(n // block):
        first, last = b * block, (b + 1) * block - 1
        chunks = range(first // hop, last // hop + 1)
        times = [arrival.get((s, k)) for s in stems for k in chunks]
        if not stems or any(t is None for t in times):
            out.append(float("nan"))
            continue
        captured = run.t0_ns + (b + 1) * block * 1e9 / run.sr
        out.append((max(times) - captured) / 1e6)
    return out


def serve_main(model: str, port: int, backend: str, stats_path: str | None) -> None:
    """Run the baseline server (uvicorn) until SIGTERM/SIGINT; write compute stats."""
    import uvicorn

    app = build_app(model, backend, stats_path=stats_path)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            ws_max_size=1 << 24)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the blueprint's WebSocket server, for benchmarks")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--stats")
    a = ap.parse_args()
    serve_main(a.model, a.port, a.backend, a.stats)
