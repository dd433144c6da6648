"""`stemlink bench make-song`: a synthetic stereo song, deterministic for a seed, so that
benchmarks run on something other than the bundled example ("a song of our own making").

It has what a vocal/accompaniment separator cares about: a sung-vowel-like voice
(glottal harmonics with spectral tilt, vibrato and jitter, shaped by vowel formants,
phrased with rests and legato glides), a bass line, sustained chords, and drums (kick,
snare, hi-hat), mixed in stereo. Key, tempo, melody and vowel sequence come from the
seed; the same seed always writes the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemlink import audio as aio

SAMPLE_RATE = 44100
# vowel formants (Hz) and bandwidths (Hz), after Peterson & Barney / Fant
VOWELS = {
    "a": ((800, 80), (1150, 90), (2900, 120), (3900, 130)),
    "e": ((400, 60), (1700, 80), (2600, 100), (3800, 120)),
    "i": ((300, 50), (2200, 90), (3000, 110), (3800, 120)),
    "o": ((450, 70), (800, 80), (2830, 100), (3800, 130)),
    "u": ((325, 50), (700, 60), (2530, 100), (3500, 120)),
}
FORMANT_GAINS = (1.0, 0.6, 0.25, 0.1)
PROGRESSION = (0, 7, 9, 5)  # I – V – vi – IV, as semitones above the tonic
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MAX_HARMONIC_HZ = 8000.0


def _hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69) / 12)


def _formant_gain(f: np.ndarray, vowel: str) -> np.ndarray:
    g = np.zeros_like(f)
    for (fc, bw), a in zip(VOWELS[vowel], FORMANT_GAINS, strict=True):
        g += a / np.sqrt(1.0 + ((f - fc) / (bw / 2)) ** 2)
    return g


def _voice(rng: np.random.Generator, n: int, sr: int, beat: int, tonic: int) -> np.ndarray:
    """Sung phrases: two bars sung, half a bar rest; one vowel per note."""
    t = np.arange(n) / sr
    pitch = np.full(n, np.nan)
    vowel_at = np.empty(n, dtype="<U1")
    env = np.zeros(n)
    bar = 4 * beat
    scale = np.array([tonic + 12 + s for s in MAJOR] + [tonic + 24])
    pos = 0
    while pos < n:
        phrase_end = min(pos + 2 * bar, n)
        k = int(rng.integers(2, 5))
        while pos < phrase_end:
            length = int(beat * rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            end = min(pos + length, phrase_end)
            k = int(np.clip(k + rng.integers(-2, 3), 0, len(scale) - 1))
            pitch[pos:end] = scale[k]
            vowel_at[pos:end] = rng.choice(list(VOWELS))
            m = end - pos
            a = np.minimum(1.0, np.arange(m) / (0.03 * sr))  # 30 ms attack
            r = np.minimum(1.0, (m - np.arange(m)) / (0.06 * sr))  # 60 ms release
            env[pos:end] = a * r * rng.uniform(0.7, 1.0)
            pos = end
        pos = min(phrase_end + bar // 2, n)  # breathe
    sung = ~np.isnan(pitch)
    pitch = np.where(sung, pitch, np.interp(t, t[sung], pitch[sung]) if sung.any() else 60)
    # legato glide between notes (40 ms one-pole), then vibrato (5.5 Hz, ±35 cents) and a
    # little slow random pitch drift
    alpha = 1.0 - np.exp(-1.0 / (0.04 * sr))
    glide = np.empty(n)
    acc = pitch[0]
    for i in range(0, n, 64):  # per 64 samples is smooth enough and fast
        acc += (pitch[i] - acc) * (1 - (1 - alpha) ** 64)
        glide[i:i + 64] = acc
    drift = np.interp(t, np.arange(0, t[-1] + 0.2, 0.2),
                      rng.normal(0, 0.08, int(t[-1] / 0.2) + 2))
    vib = 0.35 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
    f0 = _hz(glide + vib + drift)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    for v in VOWELS:  # formants per vowel segment, harmonics summed with tilt
        sel = vowel_at == v
        if not sel.any():
            continue
        idx = np.flatnonzero(sel)
        for h in range(1, int(MAX_HARMONIC_HZ / f0[idx].min()) + 1):
            fh = h * f0[idx]
            amp = _formant_gain(fh, v) * h ** -1.0 * (fh < MAX_HARMONIC_HZ)
            out[idx] += amp * np.sin(h * phase[idx])
    breath = rng.normal(0, 1, n) * 0.02
    return (out + breath * (env > 0)) * env


def _bass(n: int, sr: int, beat: int, tonic: int) -> np.ndarray:
    out = np.zeros(n)
    for start in range(0, n, beat):
        chord = PROGRESSION[(start // (4 * beat)) % len(PROGRESSION)]
        f = float(_hz(tonic - 24 + chord))
        m = min(beat, n - start)
        tt = np.arange(m) / sr
        env = np.exp(-tt / 0.35) * np.minimum(1.0, np.arange(m) / (0.005 * sr))
        out[start:start + m] += env * (np.sin(2 * np.pi * f * tt)
                                       + 0.3 * np.sin(4 * np.pi * f * tt))
    return out


def _chords(n: int, sr: int, beat: int, tonic: int) -> np.ndarray:
    """Sustained triads, sawtooth-like (8 harmonics), slightly detuned per channel."""
    out = np.zeros((2, n))
    bar = 4 * beat
    for start in range(0, n, bar):
        root = tonic + PROGRESSION[(start // bar) % len(PROGRESSION)]
        third = 3 if PROGRESSION[(start // bar) % len(PROGRESSION)] == 9 else 4
        m = min(bar, n - start)
        tt = np.arange(m) / sr
        env = np.minimum(1.0, tt / 0.08) * np.minimum(1.0, (m / sr - tt) / 0.1)
        for ch, detune in enumerate((-0.06, 0.06)):
            for note in (root, root + third, root + 7):
                f = float(_hz(note + detune))
                for h in range(1, 9):
                    out[ch, start:start + m] += env * np.sin(2 * np.pi * h * f * tt) / h / 3
    return out


def _drums(rng: np.random.Generator, n: int, sr: int, beat: int) -> np.ndarray:
    out = np.zeros((2, n))

    def hit(at: int, sig: np.ndarray, pan: float) -> None:
        m = min(sig.size, n - at)
        if m > 0:
            out[0, at:at + m] += sig[:m] * (1 - pan)
            out[1, at:at + m] += sig[:m] * (1 + pan)

    tk = np.arange(int(0.3 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 * tk + 60 * 0.04 * (1 - np.exp(-tk / 0.04)))) * np.exp(
        -tk / 0.12)
    ts = np.arange(int(0.2 * sr)) / sr
    for b, start in enumerate(range(0, n, beat)):
        if b % 2 == 0:
            hit(start, 0.9 * kick, 0.0)
        else:
            snare = (rng.normal(0, 0.5, ts.size) + 0.5 * np.sin(2 * np.pi * 190 * ts)) * np.exp(
                -ts / 0.05)
            hit(start, 0.6 * snare, 0.1)
        for half in (0, beat // 2):
            hat = np.diff(rng.normal(0, 1, int(0.05 * sr) + 1)) * np.exp(
                -np.arange(int(0.05 * sr)) / (0.012 * sr))
            hit(start + half, 0.15 * hat, -0.4)
    return out


def make_parts(seconds: float = 20.0, seed: int = 0,
               sr: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """The song's parts, each float32 [2, n], scaled as mixed: "voice" and
    "accompaniment" (bass + chords + drums); their sum peaks at 0.89 (−1 dBFS)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    bpm = float(rng.uniform(88, 126))
    beat = int(round(60 / bpm * sr))
    tonic = int(rng.integers(45, 57))  # A2 … G#3
    v = _voice(rng, n, sr, beat, tonic)
    voice = np.tile(0.9 * v / max(np.abs(v).max(), 1e-9), (2, 1))
    acc = 0.5 * _bass(n, sr, beat, tonic) + 0.35 * _chords(n, sr, beat, tonic)
    acc = acc + _drums(rng, n, sr, beat)
    gain = 0.89 / max(np.abs(voice + acc).max(), 1e-9)
    return {"voice": (gain * voice).astype(np.float32),
            "accompaniment": (gain * acc).astype(np.float32)}


def make_song(seconds: float = 20.0, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """-> float32 [2, n], peak 0.89 (−1 dBFS)."""
    p = make_parts(seconds, seed, sr)
    return (p["voice"] + p["accompaniment"]).astype(np.float32)


def write_song(path: str | Path, seconds: float = 20.0, seed: int = 0) -> Path:
    p = Path(path)
    aio.write_audio(p, make_song(seconds, seed), SAMPLE_RATE, subtype="PCM_16")
    return p
