"""Streaming sample-rate conversion for `live` (device rate <-> model rate), sans-IO.

A polyphase Kaiser-windowed-sinc converter with a fixed, stated delay and a smooth output:
every chunk fed gives back every output sample its input already determines, so a 256-frame
model block at 44.1 kHz comes back as 278 or 279 frames at 48 kHz, every time. (python-soxr's
streaming resampler, used before, returns nothing for three blocks and then ~890 frames at
once; the playout thread then popped four blocks in a burst every 20 ms, so the playout
buffer's own delay, measured at each pop, swung by three blocks and the adaptive buffer
inserted and cut blocks all the time; the capture side sent its blocks in bursts too.)

Timing is zero-phase: output sample n is the input signal at input time n * rate_in /
rate_out exactly (input sample 0 sits at output time 0). `delay()` says how many output
samples the input fed so far still owes (held back until `half` more input samples arrive),
the figure live's latency account adds to what waits in the output ring.
"""

from __future__ import annotations

from math import ceil, gcd, pi

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ATTEN_DB = 80.0  # stop-band attenuation
TRANSITION = 0.1  # transition band, as a fraction of the lower rate's Nyquist, ending there
MAX_TABLE_PHASES = 4096  # above this many phases, coefficients are computed per call


def kaiser_beta(atten_db: float) -> float:
    if atten_db > 50:
        return 0.1102 * (atten_db - 8.7)
    if atten_db >= 21:
        return 0.5842 * (atten_db - 21) ** 0.4 + 0.07886 * (atten_db - 21)
    return 0.0


class StreamResampler:
    """rate_in -> rate_out for [channels, n] float32 chunks of any size."""

    def __init__(self, rate_in: int, rate_out: int, channels: int,
                 atten_db: float = ATTEN_DB, transition: float = TRANSITION,
                 max_chunk: int = 8192) -> None:
        if rate_in <= 0 or rate_out <= 0 or channels <= 0:
            raise ValueError("rates and channels must be positive")
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g  # L, M: out n <- in n * M / L
        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        nyq = min(rate_in, rate_out) / 2
        width = transition * nyq  # Hz, ending at the lower Nyquist
        self.cutoff_hz = nyq - width / 2
        taps = (atten_db - 7.95) / (2.285 * 2 * pi * width / rate_in)
        self.half = int(ceil(taps / 2)) + 1  # K: taps at input offsets -K+1 .. K
        self._beta = kaiser_beta(atten_db)
        self._k = np.arange(2 * self.half, dtype=np.float64) - (self.half - 1)
        self._table = None
        if self.up <= MAX_TABLE_PHASES:
            self._table = self._rows(np.arange(self.up)).astype(np.float32)
        self.max_chunk = max_chunk
        cap = 2 * self.half + max_chunk
        self._buf = np.zeros((channels, cap), np.float32)
        self._out = np.zeros((channels, max_chunk * self.up // self.down + 2), np.float32)
        self.reset()

    def _rows(self, phases: np.ndarray) -> np.ndarray:
        """Coefficients [len(phases), 2K] for output times phase/L past an input sample,
        each row normalised to sum 1 (DC passes exactly)."""
        u = self._k[None, :] - phases[:, None] / self.up  # tap time - output time, input samples
        fc = self.cutoff_hz / self.rate_in  # cycles per input sample
        h = 2 * fc * np.sinc(2 * fc * u)
        r = np.clip(u / self.half, -1.0, 1.0)
        h *= np.i0(self._beta * np.sqrt(1.0 - r * r)) / np.i0(self._beta)
        return h / h.sum(axis=1, keepdims=True)

    def reset(self) -> None:
        """Forget all input (a new stream starts at input sample 0, output sample 0)."""
        self._buf[...] = 0.0
        self.fed = 0  # input samples fed
        self.produced = 0  # output samples returned
        self._base = -self.half  # input index of _buf[:, 0] (zeros before the stream)
        self._fill = self.half  # samples held in _buf

    def delay(self) -> float:
        """Output samples that the input fed so far determines but has not yet returned:
        they come out (after the output already returned) once `half` more input arrives."""
        return self.fed * self.up / self.down - self.produced

    @property
    def delay_in_samples(self) -> int:
        """The look-ahead: an output sample needs this many input samples past its time."""
        return self.half

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed x [channels, n]; returns the output it completes, [channels, m] (a view into
        a buffer reused by the next call, unless x is longer than max_chunk)."""
        n = x.shape[1]
        if n > self.max_chunk:
            parts = [self.process(x[:, a:a + self.max_chunk]).copy()
                     for a in range(0, n, self.max_chunk)]
            return np.concatenate(parts, axis=1)
        K, L, M = self.half, self.up, self.down
        np.copyto(self._buf[:, self._fill:self._fill + n], x)
        self._fill += n
        self.fed += n
        # output n is ready when input floor(n M / L) + K has arrived
        end = max(self.produced, -((-(self.fed - K) * L) // M))
        m = end - self.produced
        out = self._out[:, :m]
        if m:
            num = np.arange(self.produced, end, dtype=np.int64) * M
            i, p = num // L, num % L
            windows = sliding_window_view(self._buf[:, :self._fill], 2 * K, axis=1)
            coef = self._table[p] if self._table is not None else self._rows(p).astype(
                np.float32)
            np.einsum("cmt,mt->cm", windows[:, i - K + 1 - self._base], coef, out=out)
            self.produced = end
        # keep what the next output needs: from input floor(end M / L) - K + 1 on
        keep_from = (end * M) // L - K + 1 - self._base
        if keep_from > 0:
            rest = self._fill - keep_from
            self._buf[:, :rest] = self._buf[:, keep_from:self._fill]
            self._fill, self._base = rest, self._base + keep_from
        return out
