"""Audio files in and out, and sample-rate conversion (python-soxr), for the CLI commands.

Arrays are float32 [channels, samples] throughout stemlink.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemlink.errors import AudioFileError

SUBTYPE = "FLOAT"  # 32-bit float WAV: stems may exceed full scale where the mix did not


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """-> (float32 [C, n], sample rate). Any failure becomes one AudioFileError line."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: no such file")
    if p.is_dir():
        raise AudioFileError(f"{p}: is a folder, not an audio file")
    if p.stat().st_size == 0:
        raise AudioFileError(f"{p}: the file is empty (0 bytes)")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AudioFileError(f"{p}: not a readable audio file ({reason})") from None
    if data.shape[1] == 0:
        raise AudioFileError(f"{p}: the file has no channels")
    return np.ascontiguousarray(data.T), int(sr)


def sanitize(audio: np.ndarray) -> int:
    """Replace NaN/Inf samples with 0 in place; return how many there were."""
    bad = ~np.isfinite(audio)
    count = int(bad.sum())
    if count:
        audio[bad] = 0.0
    return count


def resample(audio: np.ndarray, sr_in: int, sr_out: int, length: int | None = None) -> np.ndarray:
    """High-quality, delay-compensated resampling of [C, n]; optionally forced to `length`."""
    if sr_in == sr_out:
        out = audio
    else:
        import soxr

        if audio.shape[1] == 0:
            out = np.zeros((audio.shape[0], 0), np.float32)
        else:
            out = soxr.resample(audio.T, sr_in, sr_out, quality="HQ").T.astype(np.float32)
    if length is not None and out.shape[1] != length:
        fixed = np.zeros((out.shape[0], length), np.float32)
        k = min(length, out.shape[1])
        fixed[:, :k] = out[:, :k]
        out = fixed
    return np.ascontiguousarray(out, dtype=np.float32)


def loop_to(audio: np.ndarray, length: int) -> np.ndarray:
    """Repeat [C, n] end to end and cut it to `length` samples (benchmarks' long inputs)."""
    if audio.shape[1] == 0:
        raise AudioFileError("cannot loop audio that has no samples")
    return np.tile(audio, (1, -(-length // audio.shape[1])))[:, :length]


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono -> the model's channel count by duplication; more channels are refused."""
    c = audio.shape[0]
    if c == channels:
        return audio
    if c == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    raise AudioFileError(f"input has {c} channels; stemlink separates mono or stereo audio")


def from_channels(stems: np.ndarray, channels: int) -> np.ndarray:
    """stems [S, C_model, n] -> [S, channels, n], undoing to_channels."""
    if stems.shape[1] == channels:
        return stems
    if channels == 1:
        return stems.mean(axis=1, keepdims=True)
    return np.repeat(stems[:, :1], channels, axis=1)


def write_audio(path: str | Path, audio: np.ndarray, sr: int, subtype: str = SUBTYPE) -> int:
    """Write [C, n]; returns how many samples had to be clipped to [-1, 1] (integer
    subtypes only; FLOAT keeps them)."""
    import soundfile as sf

    clipped = 0 if subtype in ("FLOAT", "DOUBLE") else int(np.count_nonzero(np.abs(audio) > 1.0))
    data = np.clip(audio, -1.0, 1.0).T if clipped else audio.T
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), data, sr, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{path}: cannot write ({e})") from None
    return clipped
