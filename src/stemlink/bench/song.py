"""A song of our own making, for fidelity checks on audio nobody tuned against: a harmonic
voice (vibrato, vowel formants, breath) over bass, chords and drums. Deterministic for a
given seed.

    python -m stemlink.bench.song out.wav [--seconds 12] [--seed 7]
"""

from __future__ import annotations

import argparse

import numpy as np

SAMPLE_RATE = 44100
BPM = 100
SCALE = (0, 2, 4, 5, 7, 9, 11)  # major, semitones above the key
KEY_HZ = 220.0  # A3
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410),
          (300, 870, 2240))  # a, e, i, o, u: F1-F3 in Hz
CHORDS = ((0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14))  # I vi IV V, semitones


def _semi(hz: float, semitones: float) -> float:
    return hz * 2.0 ** (semitones / 12.0)


def _env(n: int, attack: int, release: int) -> np.ndarray:
    e = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    e[:a] = np.linspace(0, 1, a, endpoint=False)
    e[n - r:] = np.linspace(1, 0, r)
    return e


def _voice(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of a melody, sung on changing vowels: additive harmonics under a formant
    envelope, 5.5 Hz vibrato of +-30 cents, a little breath noise; rests between phrases."""
    out = np.zeros(n)
    beat = int(sr * 60 / BPM)
    pos = beat  # a beat of accompaniment first
    while pos < n:
        length = int(beat * rng.choice((0.5, 1.0, 1.0, 1.5, 2.0)))
        if rng.random() < 0.15:  # a rest
            pos += length
            continue
        f0 = _semi(KEY_HZ, SCALE[rng.integers(0, 7)] + 12 * rng.integers(0, 2))
        formants = VOWELS[rng.integers(0, len(VOWELS))]
        seg = min(length, n - pos)
        t = np.arange(seg) / sr
        vib = 2.0 ** (0.3 / 12 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 6.3)) *
                      np.minimum(1.0, t / 0.25))  # vibrato fades in
        phase = 2 * np.pi * np.cumsum(f0 * vib) / sr
        note = np.zeros(seg)
        for h in range(1, int(5000 / f0) + 1):
            gain = sum(1.0 / (1.0 + ((h * f0 - f) / (60 + 0.06 * f)) ** 2) for f in formants)
            note += gain / h ** 0.7 * np.sin(h * phase)
        note += 0.02 * rng.standard_normal(seg)  # breath
        out[pos:pos + seg] += note * _env(seg, int(0.03 * sr), int(0.08 * sr))
        pos += length
    return 0.25 * out / max(np.abs(out).max(), 1e-9)


def _accompaniment(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """[2, n]: bass on the chord roots, chords panned left/right, drums in the middle."""
    out = np.zeros((2, n))
    beat = int(sr * 60 / BPM)
    bar = 4 * beat
    for b, start in enumerate(range(0, n, bar)):
        chord = CHORDS[b % len(CHORDS)]
        seg = min(bar, n - start)
        t = np.arange(seg) / sr
        root = _semi(KEY_HZ / 4, chord[0])  # bass two octaves down
        bass = sum(np.sin(2 * np.pi * h * root * t) / h for h in range(1, 9))
        out[:, start:start + seg] += 0.12 * bass * _env(seg, 200, 2000)
        for i, s in enumerate(chord):
            f = _semi(KEY_HZ, s)
            tone = sum(np.sin(2 * np.pi * h * f * t + rng.uniform(0, 6.3)) / h ** 1.5
                       for h in range(1, 5))
            pan = (0.3 + 0.2 * i, 0.7 - 0.2 * i)
            for ch in range(2):
                out[ch, start:start + seg] += 0.04 * pan[ch] * tone * _env(seg, 4000, 4000)
    for k, start in enumerate(range(0, n, beat // 2)):  # eighth notes
        hit = np.zeros(min(int(0.25 * sr), n - start))
        t = np.arange(hit.size) / sr
        if k % 4 == 0:  # kick on beats 1 and 3
            hit += np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t * 30)) / 30)) * np.exp(-t * 12)
        if k % 4 == 2:  # snare on 2 and 4
            hit += (0.6 * rng.standard_normal(hit.size) + 0.4 * np.sin(2 * np.pi * 190 * t)) * \
                np.exp(-t * 25)
        hat = rng.standard_normal(hit.size)
        hat = np.diff(hat, prepend=0.0) * np.exp(-t * 80)  # first difference: high-passed
        hit += 0.25 * hat
        out[:, start:start + hit.size] += 0.2 * hit
    return out


def make_song(seconds: float = 12.0, seed: int = 7, sr: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [2, n] at 44.1 kHz, peak 0.9."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    voice = _voice(n, sr, rng)
    mix = _accompaniment(n, sr, rng) + voice[None, :]
    return (0.9 * mix / np.abs(mix).max()).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    from stemlink.audio import write_audio

    write_audio(a.out, make_song(a.seconds, a.seed), SAMPLE_RATE)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
