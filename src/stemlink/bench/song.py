"""A song of our own making, for calibration and fidelity checks that must not depend on
the one bundled example: a sung-vowel voice (glottal pulse train through moving formants,
vibrato, syllables, a melody) over bass, strummed chords and drums, mixed in stereo.
Deterministic for a seed. `stemlink bench song --out song.wav` writes it."""

from __future__ import annotations

import numpy as np

RATE = 44100
# vowel formants (Hz) and bandwidths: a, e, i, o, u
FORMANTS = [((800, 1150, 2900), (80, 90, 120)), ((400, 1600, 2700), (60, 80, 120)),
            ((350, 1700, 2700), (50, 100, 120)), ((450, 800, 2830), (70, 80, 100)),
            ((325, 700, 2700), (50, 60, 170))]
SCALE = [0, 2, 4, 5, 7, 9, 11, 12]  # major scale, semitones


def _resonator(x: np.ndarray, f: np.ndarray, bw: float, sr: int) -> np.ndarray:
    """Two-pole resonator with a time-varying centre frequency (per-sample loop in numpy
    chunks of 64 samples: frequency steps are inaudible at that rate)."""
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    r = np.exp(-np.pi * bw / sr)
    for s in range(0, x.size, 64):
        c = 2 * r * np.cos(2 * np.pi * f[s] / sr)
        for i in range(s, min(s + 64, x.size)):
            v = x[i] + c * y1 - r * r * y2
            y[i] = v
            y2, y1 = y1, v
    return y * (1 - r)


def _voice(n: int, sr: int, rng: np.random.Generator, bpm: float) -> np.ndarray:
    beat = 60 / bpm
    t = np.arange(n) / sr
    notes = rng.choice(SCALE, size=int(n / sr / beat) + 2)
    f0 = 220.0 * 2 ** (notes[(t / beat).astype(int)] / 12)
    f0 = f0 * (1 + 0.012 * np.sin(2 * np.pi * 5.5 * t))  # vibrato
    phase = np.cumsum(f0 / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    src = np.convolve(pulses, np.exp(-np.arange(64) / 6.0), mode="same")  # glottal shape
    src += 0.02 * rng.standard_normal(n)  # breath
    vowel = rng.integers(0, len(FORMANTS), size=int(n / sr / beat) + 2)
    idx = vowel[(t / beat).astype(int)]
    out = np.zeros(n)
    for k in range(3):
        f = np.array([FORMANTS[v][0][k] for v in range(len(FORMANTS))])[idx]
        f = np.convolve(f, np.ones(2048) / 2048, mode="same")  # glide between vowels
        out += _resonator(src, f, FORMANTS[0][1][k], sr) * (1.0, 0.6, 0.3)[k]
    syll = 0.5 - 0.5 * np.cos(2 * np.pi * np.minimum((t % beat) / beat, 1.0))
    rests = rng.random(len(notes)) < 0.2
    gate = np.where(rests[(t / beat).astype(int)], 0.0, syll)
    return out * gate


def _instruments(n: int, sr: int, rng: np.random.Generator, bpm: float) -> np.ndarray:
    beat = 60 / bpm
    t = np.arange(n) / sr
    bar = (t / (4 * beat)).astype(int)
    roots = np.array([0, 5, 7, 3])[bar % 4]
    bass_f = 55.0 * 2 ** (roots / 12)
    bass = np.sign(np.sin(2 * np.pi * np.cumsum(bass_f / sr))) * 0.3
    bass *= np.exp(-((t % (beat / 2)) / 0.25))
    chords = np.zeros(n)
    for third in (0, 4, 7):
        f = 220.0 * 2 ** ((roots + third) / 12)
        saw = 2 * ((np.cumsum(f / sr)) % 1.0) - 1
        chords += saw * np.exp(-((t % beat) / 0.3)) * 0.12
    drums = np.zeros(n)
    for k in range(int(n / sr / beat) + 1):
        at = int(k * beat * sr)
        m = min(n - at, int(0.3 * sr))
        if m <= 0:
            break
        tt = np.arange(m) / sr
        if k % 2 == 0:  # kick
            drums[at:at + m] += np.sin(2 * np.pi * 60 * tt * (1 + 2 * np.exp(-tt * 30))) \
                * np.exp(-tt * 12) * 0.6
        else:  # snare
            drums[at:at + m] += rng.standard_normal(m) * np.exp(-tt * 25) * 0.25
        hat = min(m, int(0.05 * sr))
        drums[at:at + hat] += rng.standard_normal(hat) * np.exp(-np.arange(hat) / 200) * 0.05
    return np.stack([bass + 0.8 * chords + drums, bass + 1.2 * chords + drums])


def make_song(seconds: float, seed: int = 1, sr: int = RATE) -> np.ndarray:
    """float32 [2, n]: voice slightly right of centre over the band, peak at -1 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    bpm = 96.0 + 8 * rng.random()
    v = _voice(n, sr, rng, bpm)
    v /= max(np.abs(v).max(), 1e-9)
    band = _instruments(n, sr, rng, bpm)
    band /= max(np.abs(band).max(), 1e-9)
    mix = 0.6 * band + 0.5 * np.stack([0.9 * v, 1.1 * v])
    return (mix / np.abs(mix).max() * 10 ** (-1 / 20)).astype(np.float32)
