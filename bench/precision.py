"""Model variants (int8 on the CPU, FP16 on a GPU) against the FP32 model: the same
streaming separator on the same audio, output SDR of the variant against FP32 and the
fidelity each has against the offline FP32 model, plus compute per window."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stemlink.bench.fidelity import sdr
from stemlink.engine.backend import Backend
from stemlink.engine.card import ModelCard
from stemlink.engine.presets import StreamConfig
from stemlink.engine.streaming import StreamingSeparator
from stemlink.percentiles import summarize
from stemlink.separate import stream_array

CONFIG = StreamConfig(2, 0, "standard")  # `monitor` on a CPU


class _Recorder:
    """A backend that records the windows it is given (for calibration), then runs."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.batch = inner.name, inner.batch
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.windows: list[np.ndarray] = []

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self) -> np.ndarray:
        self.windows.append(self.inner.inputs[0].copy())
        return self.inner.infer()


def calibration_windows(card: ModelCard, backend: Backend, songs: list[np.ndarray],
                        every: int = 2) -> np.ndarray:
    """Magnitude windows the streaming separator feeds the model on these songs."""
    rec = _Recorder(backend)
    for x in songs:
        stream_array(StreamingSeparator(card, rec, CONFIG), x)
    return np.stack(rec.windows[::every])


def streamed(card: ModelCard, backend: Backend, x: np.ndarray,
             config: StreamConfig = CONFIG) -> np.ndarray:
    return stream_array(StreamingSeparator(card, backend, config), x)


def stem_sdr(card: ModelCard, ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    return {s: round(sdr(ref[i], est[i]), 2) for i, s in enumerate(card.stems)}


def compute_ms(backends: dict[str, Backend], iterations: int) -> dict[str, dict]:
    """Model-only time per window, the backends interleaved (one call each per round) so
    that other load on the machine falls on all of them alike."""
    rng = np.random.default_rng(0)
    for b in backends.values():
        b.inputs[...] = rng.random(b.inputs.shape, np.float32) * 10
        b.infer()
    times: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(iterations):
        for k, b in backends.items():
            t = time.perf_counter()
            b.infer()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: summarize(v, (50, 99)) for k, v in times.items()}


def audio_set(seconds: float, card: ModelCard) -> dict[str, np.ndarray]:
    """The bundled example and a song of our own making, at the model's rate and layout."""
    from stemlink import audio as aio
    from stemlink.bench.song import make_song
    from stemlink.export.checkpoint import example_audio

    x, sr = aio.read_audio(example_audio())
    x = aio.resample(aio.to_channels(x, card.channels), sr, card.sample_rate)
    song = aio.to_channels(make_song(seconds, seed=7, sr=card.sample_rate), card.channels)
    return {Path(example_audio()).name: x[:, :int(seconds * card.sample_rate)],
            "synthetic song (seed 7)": song}
