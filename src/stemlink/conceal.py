"""Loss concealment for blocks of audio, sans-IO (numpy only), shared by client and server.

`Concealer(channels, block, method, rate)` sees a stream of blocks `[channels, block]`
float32 in order. Each block is either real (`good(block, out)`) or missing
(`missing(out)`); both write the block to play into `out`. The ladder, cheapest first:

- ``zero``   faded zero-fill: the signal ramps from its last value to silence over a
  short fade (no step), then silence.
- ``repeat`` the last block looped, its loop point smoothed by an overlap-add.
- ``pitch``  pitch-period repetition with overlap-add (ITU-T G.711 Appendix I style): the
  period is found by normalised autocorrelation of the recent signal; the loop spans whole
  periods, its loop point overlap-added.
- ``lpc``    Burg linear prediction (order 32) per channel, run forward as an all-pole
  filter (JackTrip's PLC idea).
- ``match``  waveform matching, long-term prediction with several taps: the lags (up to
  80 ms) whose past best matches the last 11.6 ms are combined with least-squares gains
  (ridge-shrunk, so a poor match conceals quietly rather than wrongly). When the caller
  already holds the real block that follows the gap (`missing(out, after=...)`: a jitter
  buffer with a block in hand, a server whose next block has arrived), a second match
  predicts the gap backwards from that block and the two are cross-faded across the
  block: the gap is interpolated, not only extrapolated.

Every method: the same envelope (full gain for HOLD_S, then a linear fade to silence at
FADE_END_S, ~60 ms, silence after); the entry join is made continuous by a decaying step
correction towards a first-order prediction of the next sample; the exit join (the first
real block after a gap) is cross-faded over `xfade` samples from the concealment's own
continuation. No added delay: nothing already played is rewritten. All buffers are
allocated in __init__; good() and missing() allocate no arrays.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from numpy.lib.stride_tricks import as_strided

HOLD_S = 0.010  # concealment at full gain for this long ...
FADE_END_S = 0.060  # ... then fades linearly to silence here (G.711 App. I: 60 ms)
XFADE_S = 0.0015  # cross-fade at the joins (66 samples at 44.1 kHz), at most one block
HISTORY_S = 0.048  # analysis history kept (pitch search, Burg window)
PITCH_MIN_S, PITCH_MAX_S = 1 / 400, 1 / 66  # 2.5 .. 15 ms periods
PITCH_WIN_S = 0.008  # correlation window for the pitch search
LPC_ORDER = 32
LPC_WIN = 1024  # samples the Burg fit sees
MATCH_WIN_S = 0.0116  # context window the waveform match fits (512 samples at 44.1 kHz)
MATCH_MAX_S = 0.080  # longest lag searched
MATCH_TAPS = 16  # lags combined by least squares
MATCH_SEP = 16  # samples between chosen lags
MATCH_RIDGE = 0.3  # ridge on the least-squares fit, relative to the mean tap energy


class Method(str, Enum):
    ZERO = "zero"
    REPEAT = "repeat"
    PITCH = "pitch"
    LPC = "lpc"
    MATCH = "match"


METHODS = tuple(m.value for m in Method)
DEFAULT_METHOD = Method.MATCH.value  # measured best, see docs/BENCHMARKS.md


class Concealer:
    """One stream's concealment state. Not thread-safe: one owner calls it, in order."""

    def __init__(self, channels: int, block: int, method: str = DEFAULT_METHOD,
                 rate: int = 44100) -> None:
        self.method = Method(method)
        self.channels, self.block, self.rate = channels, block, rate
        c, b = channels, block
        self.xfade = f = max(1, min(b, round(XFADE_S * rate)))
        self.mwin = round(MATCH_WIN_S * rate)
        self.mmax = round(MATCH_MAX_S * rate)
        self.fwin = min(b, 256)  # the matched window of the following block
        self.hist_len = h = max(round(HISTORY_S * rate), LPC_WIN + 1, 2 * b,
                                self.mwin + self.mmax + f + 2, self.mmax + self.fwin + b + 1)
        self.hold = round(HOLD_S * rate)
        self.fade_end = round(FADE_END_S * rate)
        self.pmin = max(2, round(PITCH_MIN_S * rate))
        self.mmin = max(self.pmin, f + 1)  # shortest lag: a pitch period, longer than a fade
        self.pmax = min(round(PITCH_MAX_S * rate), h // 2)
        self.pwin = round(PITCH_WIN_S * rate)
        # history of what was played, newest last; two buffers swapped on every block so
        # the shift never copies overlapping memory (numpy would allocate a temporary)
        self._hist = np.zeros((c, h), np.float32)
        self._hist2 = np.zeros((c, h), np.float32)
        # gain per sample since the gap began; zeros past the fade
        n_env = self.fade_end + b + f + 1
        t = np.arange(n_env, dtype=np.float64)
        env = np.clip((self.fade_end - t) / max(1, self.fade_end - self.hold), 0.0, 1.0)
        self._env = env.astype(np.float32)
        self._ramp_in = ((np.arange(f, dtype=np.float32) + 1) / (f + 1)).astype(np.float32)
        self._ramp_out = (1.0 - self._ramp_in).astype(np.float32)
        self._ramp_up = ((np.arange(f, dtype=np.float32) + 1) / f).astype(np.float32)
        self._ext = np.zeros((c, b + f), np.float32)  # concealment for this block + xfade
        self._tmp = np.zeros((c, b + f), np.float32)
        self._delta = np.zeros((c, 1), np.float32)
        self._t = 0  # samples concealed in the current gap; 0 = not concealing
        self.concealed_blocks = 0
        # loop source (repeat, pitch): up to half the history, plus its smoothed wrap
        self._loop = np.zeros((c, h), np.float32)
        self._loop_len = b
        # pitch search scratch (mono)
        self._mono = np.zeros(h, np.float32)
        nl = self.pmax - self.pmin + 1
        self._corr = np.zeros(nl, np.float32)
        self._sq = np.zeros(h + 1, np.float32)  # float32 throughout: a cast would buffer
        self._energy = np.zeros(nl, np.float32)
        # LPC: coefficients (reversed, negated) and a run buffer [C, order + b + f]
        p = LPC_ORDER
        self._a = np.zeros((c, p + 1), np.float64)
        self._a_tmp = np.zeros((c, p + 1), np.float64)
        self._a_tmp2 = np.zeros((c, p + 1), np.float64)
        self._coef = np.zeros((c, p), np.float64)
        self._fw = np.zeros((c, LPC_WIN), np.float64)
        self._bw = np.zeros((c, LPC_WIN), np.float64)
        self._fw2 = np.zeros((c, LPC_WIN), np.float64)
        self._num = np.zeros(c, np.float64)
        self._den = np.zeros(c, np.float64)
        self._k = np.zeros((c, 1), np.float64)
        self._run = np.zeros((c, p + b + f), np.float64)  # float64: high-order recursion
        self._prod = np.zeros((c, p), np.float64)
        # waveform match: scores over lags, chosen lags and gains, one loop per tap
        nm = self.mmax + 1
        self._mcorr = np.zeros(nm, np.float32)
        self._menergy = np.zeros(nm, np.float32)
        # numpy, not lists: a list would keep the Python numbers each fit creates
        self._lags = np.zeros(MATCH_TAPS, np.int64)
        self._gains = np.zeros(MATCH_TAPS, np.float64)
        self._ntaps = 0
        self._gram = np.zeros((MATCH_TAPS, MATCH_TAPS), np.float64)
        self._gram32 = np.zeros((MATCH_TAPS, MATCH_TAPS), np.float32)
        self._wmat = np.zeros((MATCH_TAPS, max(self.mwin, self.fwin)), np.float32)
        self._chol_tmp = np.zeros(MATCH_TAPS, np.float64)
        self._loops = np.zeros((MATCH_TAPS, c, h), np.float32)
        self._loop_lens = np.full(MATCH_TAPS, b, np.int64)
        self._fmono = np.zeros(self.fwin, np.float32)
        self._bwd = np.zeros((c, b), np.float32)
        self._w_in = ((np.arange(b, dtype=np.float32) + 0.5) / b).astype(np.float32)
        self._w_out = (1.0 - self._w_in).astype(np.float32)
        self._joined = False  # the last missing block was interpolated into `after`

    # ---------------------------------------------------------------- public API
    @property
    def concealing(self) -> bool:
        return self._t > 0

    @property
    def silent(self) -> bool:
        """Concealing, and faded to silence (a consumer may skip work on such blocks)."""
        return self._t > self.fade_end

    def reset(self) -> None:
        """Forget the past (it was silence, e.g. a long hole jumped over): the next real
        block fades in from silence."""
        self._hist[...] = 0.0
        self._ext[...] = 0.0
        self._joined = False
        self._t = self.fade_end + 1

    def good(self, block: np.ndarray, out: np.ndarray) -> bool:
        """A real block: copy it to `out`, cross-faded in if it ends a concealed run.
        Returns True when it was cross-faded. `block` and `out` may be the same array."""
        faded = self._t > 0
        if faded and self._joined:  # the gap was already interpolated into this block
            if out is not block:
                np.copyto(out, block)
            self._t = 0
            self._joined = False
        elif faded:
            f = self.xfade
            np.multiply(block[:, :f], self._ramp_in, out=self._tmp[:, :f])
            np.multiply(self._ext[:, self.block:], self._ramp_out, out=self._tmp[:, f:2 * f])
            np.add(self._tmp[:, :f], self._tmp[:, f:2 * f], out=out[:, :f])
            if out is not block:
                np.copyto(out[:, f:], block[:, f:])
            self._t = 0
        elif out is not block:
            np.copyto(out, block)
        self._push(out)
        return faded

    def missing(self, out: np.ndarray, after: np.ndarray | None = None) -> None:
        """A missing block: write its concealment into `out` [channels, block].

        `after`, when given, is the real block that immediately follows this one (the
        caller passes it to good() next); `match` then interpolates the gap into it."""
        b, f = self.block, self.xfade
        if self._t == 0:
            self._start()
        m = self.method
        if m is Method.ZERO:
            self._ext[...] = 0.0
        elif m is Method.LPC:
            self._lpc_run()
        elif m is Method.MATCH:
            self._match_read(self._t)
        else:
            self._loop_read(self._t)
        if m is not Method.ZERO:  # the envelope; zero-fill is already silent
            _rows_imul(self._ext, self._env[self._t:self._t + b + f])
        if self._t == 0 and m is not Method.LPC:  # entry join: decay the step (LPC's first
            # sample is its own prediction, it needs none)
            if m is Method.ZERO:
                self._delta -= self._ext[:, :1]
            n = min(f, b)
            np.multiply(self._delta, self._ramp_out[:n], out=self._tmp[:, :n])
            _rows_iadd(self._ext[:, :n], self._tmp[:, :n])
        if m is Method.MATCH and after is not None and self._match_back(after):
            _rows_imul(self._ext[:, :b], self._w_out)
            _rows_imul(self._bwd, self._w_in)
            np.add(self._ext[:, :b], self._bwd, out=out)
            self._joined = True
        else:
            np.copyto(out, self._ext[:, :b])
        self._t = min(self._t + b, self.fade_end + 1)
        self.concealed_blocks += 1
        self._push(out)

    # ---------------------------------------------------------------- internals
    def _push(self, x: np.ndarray) -> None:
        b = self.block
        np.copyto(self._hist2[:, :-b], self._hist[:, b:])
        np.copyto(self._hist2[:, -b:], x)
        self._hist, self._hist2 = self._hist2, self._hist

    def _start(self) -> None:
        """A gap begins: analyse the history once."""
        hist = self._hist
        m = self.method
        if m is Method.ZERO:  # first-order prediction of the next sample
            np.subtract(hist[:, -1:], hist[:, -2:-1], out=self._delta)
            self._delta += hist[:, -1:]
        if m is Method.REPEAT:
            self._make_loop(self.block)
        elif m is Method.PITCH:
            p = self._pitch()
            # whole periods, at least ~5 ms, so a short period does not buzz
            k = max(1, -(-round(0.005 * self.rate) // p))
            self._make_loop(min(p * k, self.hist_len // 2))
        elif m is Method.MATCH:
            self._match_fit()
        if m in (Method.REPEAT, Method.PITCH):
            # the loop starts at x[n - L]; its natural predecessor x[n - L - 1] should be
            # the last sample played, x[n - 1]: the offset between them is the step to decay
            L, h = self._loop_len, self.hist_len
            np.subtract(hist[:, -1:], hist[:, h - L - 1:h - L], out=self._delta)
        elif m is Method.MATCH:  # the same offset for the gain-weighted taps
            h = self.hist_len
            np.copyto(self._delta, hist[:, -1:])
            for k in range(self._ntaps):
                L, g = int(self._lags[k]), float(self._gains[k])
                np.multiply(hist[:, h - L - 1:h - L], g, out=self._tmp[:, :1])
                self._delta -= self._tmp[:, :1]
        elif m is Method.LPC:
            self._burg()
            p = LPC_ORDER
            np.copyto(self._run[:, :p], hist[:, -p:])

    def _make_loop(self, length: int, loop: np.ndarray | None = None) -> None:
        """Loop the last `length` samples; overlap-add its end into the samples that
        preceded its start, so wrapping around is smooth."""
        h, f = self.hist_len, self.xfade  # length >= block >= xfade, length + f <= h
        hist = self._hist
        if loop is None:
            loop = self._loop
            self._loop_len = length
        np.copyto(loop[:, :length], hist[:, h - length:])
        tail = loop[:, length - f:length]
        _rows_imul(tail, self._ramp_out)
        np.multiply(hist[:, h - length - f:h - length], self._ramp_in, out=self._tmp[:, :f])
        _rows_iadd(tail, self._tmp[:, :f])

    def _loop_read(self, t: int, loop: np.ndarray | None = None, length: int = 0,
                   gain: float = 1.0) -> None:
        """ext[:, i] (+)= gain * loop[(t + i) mod L] for i in 0 .. block + xfade; without
        a loop given, ext = self._loop."""
        n = self.block + self.xfade
        add = loop is not None
        if not add:
            loop, length = self._loop, self._loop_len
        i, pos = 0, t % length
        while i < n:
            k = min(length - pos, n - i)
            if add:
                for ch in range(self.channels):  # row by row: see _rows_iadd
                    np.multiply(loop[ch, pos:pos + k], gain, out=self._tmp[ch, :k])
                    np.add(self._ext[ch, i:i + k], self._tmp[ch, :k], out=self._ext[ch, i:i + k])
            else:
                np.copyto(self._ext[:, i:i + k], loop[:, pos:pos + k])
            i += k
            pos = 0

    # ---------------------------------------------------------------- waveform match
    def _scores(self, ref: np.ndarray, first: int, n: int) -> None:
        """Normalised match of `ref` against mono windows starting at first .. first+n-1
        (into _menergy[:n], higher is better; window energies floored)."""
        mono, w = self._mono, ref.shape[0]
        corr, en = self._mcorr[:n], self._menergy[:n]
        # every window as a row of a strided view; einsum reads it in place (np.dot
        # would copy the view for BLAS: megabytes), so nothing is allocated
        st = mono.strides[0]
        view = as_strided(mono[first:], shape=(n, w), strides=(st, st), writeable=False)
        np.einsum("ij,j->i", view, ref, out=corr)
        sq = self._sq
        np.square(mono, out=sq[1:])
        np.cumsum(sq[1:], out=sq[1:])
        np.subtract(sq[first + w:first + w + n], sq[first:first + n], out=en)
        np.maximum(en, 1e-9, out=en)
        np.sqrt(en, out=en)
        np.divide(corr, en, out=en)

    def _fit(self, ref: np.ndarray, first: int, n: int, lag_of) -> None:
        """Choose up to MATCH_TAPS well-separated windows by score and fit their gains to
        `ref` by ridge least squares; lags and gains into self._lags/_gains."""
        self._scores(ref, first, n)
        sc, mono, w = self._menergy[:n], self._mono, ref.shape[0]
        starts = self._lags  # hold window starts first, converted to lags below
        rhs = self._gains
        nt = 0
        while nt < MATCH_TAPS:
            j = int(np.argmax(sc))
            if not sc[j] > 0.0:
                break
            starts[nt] = first + j
            rhs[nt] = float(self._mcorr[j])
            nt += 1
            sc[max(0, j - MATCH_SEP):j + MATCH_SEP + 1] = -np.inf
        self._ntaps = nt
        if nt == 0:
            return
        wm = self._wmat[:nt, :w]  # the chosen windows as rows: one BLAS product
        for a in range(nt):
            np.copyto(wm[a], mono[starts[a]:starts[a] + w])
        g = self._gram[:nt, :nt]
        np.matmul(wm, wm.T, out=self._gram32[:nt, :nt])
        np.copyto(g, self._gram32[:nt, :nt])
        ridge = MATCH_RIDGE * float(np.trace(g)) / nt + 1e-12
        for a in range(nt):
            g[a, a] += ridge
        _cholesky_solve(g, rhs[:nt], self._chol_tmp)
        for a in range(nt):
            starts[a] = lag_of(starts[a])

    def _match_fit(self) -> None:
        """At a gap's start: taps that predict the history's last mwin samples."""
        h, w = self.hist_len, self.mwin
        mono = self._mono
        np.copyto(mono, self._hist[0])
        for ch in range(1, self.channels):
            mono += self._hist[ch]
        first = h - w - self.mmax  # window start for lag mmax; lag = h - w - start
        n = self.mmax - self.mmin + 1
        # ref is the last window itself; the scores never reach it (lag >= mmin > 0)
        self._fit(mono[h - w:], first, n, lambda s: h - w - s)
        for k in range(self._ntaps):
            self._make_loop(int(self._lags[k]), self._loops[k])
            self._loop_lens[k] = self._lags[k]

    def _match_read(self, t: int) -> None:
        self._ext[...] = 0.0
        for k in range(self._ntaps):
            self._loop_read(t, self._loops[k], int(self._loop_lens[k]), float(self._gains[k]))

    def _match_back(self, after: np.ndarray) -> bool:
        """Predict this block backwards from the start of `after` into _bwd."""
        h, b, wf = self.hist_len, self.block, self.fwin
        mono = self._mono  # the history as it stands (earlier blocks of this gap included)
        np.copyto(mono, self._hist[0])
        for ch in range(1, self.channels):
            mono += self._hist[ch]
        fm = self._fmono
        np.copyto(fm, after[0, :wf])
        for ch in range(1, self.channels):
            fm += after[ch, :wf]
        # after starts at h + b (history coordinates); a window at start s has lag
        # L = h + b - s; it must end inside the history: s <= h - wf; s >= h - mmax - wf
        first = h - self.mmax - wf
        n = self.mmax + 1
        self._fit(fm, first, n, lambda s: s)  # keep window starts
        if self._ntaps == 0:
            return False
        self._bwd[...] = 0.0
        for k in range(self._ntaps):
            s = int(self._lags[k])  # this block is b samples before `after`: hist[s - b, s)
            for ch in range(self.channels):
                np.multiply(self._hist[ch, s - b:s], float(self._gains[k]), out=self._tmp[ch, :b])
                np.add(self._bwd[ch], self._tmp[ch, :b], out=self._bwd[ch])
        # exit join: the taps' own successor of this block is sum(gain * hist[start]);
        # ramp in the offset to the real after[0], so the step into `after` is the taps'
        # natural step
        f = self.xfade
        for ch in range(self.channels):
            nxt = 0.0
            for k in range(self._ntaps):
                nxt += float(self._gains[k]) * float(self._hist[ch, int(self._lags[k])])
            off = float(after[ch, 0]) - nxt
            np.multiply(self._ramp_up, off, out=self._tmp[ch, :f])
            np.add(self._bwd[ch, b - f:], self._tmp[ch, :f], out=self._bwd[ch, b - f:])
        return True

    def _pitch(self) -> int:
        """Period (samples) maximising the normalised correlation of the last pwin
        samples with the pwin samples one period earlier."""
        h, w = self.hist_len, self.pwin
        mono = self._mono
        np.copyto(mono, self._hist[0])
        for ch in range(1, self.channels):
            mono += self._hist[ch]
        ref = mono[h - w:]
        start = h - w - self.pmax  # window j starts at start + j and has lag pmax - j
        nl = self.pmax - self.pmin + 1
        corr = self._corr
        for j in range(nl):  # np.dot of two 1-D views: no array allocated
            corr[j] = np.dot(mono[start + j:start + j + w], ref)
        sq = self._sq
        np.square(mono, out=sq[1:])
        np.cumsum(sq[1:], out=sq[1:])
        # energy of window starting at start + j: sq[start+j+w] - sq[start+j]
        np.subtract(sq[start + w:start + w + nl], sq[start:start + nl], out=self._energy)
        np.maximum(self._energy, 1e-12, out=self._energy)
        np.sqrt(self._energy, out=self._energy)
        np.divide(self._corr, self._energy, out=self._energy)
        j = int(np.argmax(self._energy))
        if self._energy[j] <= 0.0:  # silence or no periodicity: loop the last block
            return min(self.block, self.hist_len // 2)
        return self.pmax - j

    def _burg(self) -> None:
        """Burg's method, all channels at once, into self._coef (negated, reversed)."""
        p, n = LPC_ORDER, LPC_WIN
        fw, bw, a = self._fw, self._bw, self._a
        np.copyto(fw, self._hist[:, -n:])
        np.copyto(bw, fw)
        a[...] = 0.0
        a[:, 0] = 1.0
        num, den, k = self._num, self._den, self._k
        for m in range(p):
            ff, bb = fw[:, m + 1:], bw[:, m:n - 1]
            for ch in range(self.channels):  # 1-D dots of contiguous rows: no buffers
                num[ch] = np.dot(ff[ch], bb[ch])
                den[ch] = np.dot(ff[ch], ff[ch]) + np.dot(bb[ch], bb[ch])
            np.maximum(den, 1e-18, out=den)
            np.divide(num, den, out=k[:, 0])
            k *= -2.0
            # a_new[i] = a[i] + k * a[m + 1 - i]
            np.copyto(self._a_tmp[:, :m + 2], a[:, m + 1::-1])
            np.multiply(self._a_tmp[:, :m + 2], k, out=self._a_tmp2[:, :m + 2])
            a[:, :m + 2] += self._a_tmp2[:, :m + 2]
            # f'[i] = f[i] + k b[i-1], b'[i] = b[i-1] + k f[i], for i = m+1 .. n-1
            f2 = self._fw2[:, :n - m - 1]
            np.multiply(bb, k, out=f2)
            f2 += ff
            _rows_imul(ff, k[:, 0])
            ff += bb  # ff now holds b'
            np.copyto(bw[:, m + 1:], ff)
            np.copyto(ff, f2)
        # prediction: x[t] = -sum_{i=1..p} a[i] x[t-i]; coef over run[t-p .. t-1]
        np.negative(a[:, p:0:-1], out=self._a_tmp[:, :p])
        np.copyto(self._coef, self._a_tmp[:, :p])

    def _lpc_run(self) -> None:
        """Continue the all-pole recursion for block + xfade samples into ext."""
        p, b, f = LPC_ORDER, self.block, self.xfade
        run, coef, prod = self._run, self._coef, self._prod
        for t in range(b + f):
            np.multiply(coef, run[:, t:t + p], out=prod)
            np.sum(prod, axis=1, out=run[:, p + t])
        np.copyto(self._ext, run[:, p:])
        # the next block continues from the state after this block (not after the xfade)
        np.copyto(run[:, :p], run[:, b:b + p])


def _rows_imul(x: np.ndarray, v: np.ndarray) -> None:
    """x[i] *= v (a vector, or v[i] a scalar) row by row: numpy copies an operand of an
    in-place broadcast multiply, so a 2-D `x *= v` would allocate."""
    for i in range(x.shape[0]):
        if v.ndim == 1 and v.shape[0] == x.shape[1]:
            np.multiply(x[i], v, out=x[i])
        else:
            np.multiply(x[i], v[i], out=x[i])


def _cholesky_solve(g: np.ndarray, rhs: np.ndarray, tmp: np.ndarray) -> None:
    """Solve g x = rhs in place (rhs <- x) for a small symmetric positive-definite g
    (overwritten by its Cholesky factor), column by column with numpy on views."""
    n = g.shape[0]
    for j in range(n):
        if j:
            np.matmul(g[j:, :j], g[j, :j], out=tmp[:n - j])
            g[j:, j] -= tmp[:n - j]
        d = float(g[j, j])
        d = d ** 0.5 if d > 1e-12 else 1e-6
        g[j, j] = d
        g[j + 1:, j] /= d
    for i in range(n):  # L y = rhs
        rhs[i] = (float(rhs[i]) - float(np.dot(g[i, :i], rhs[:i]))) / float(g[i, i])
    for i in range(n - 1, -1, -1):  # L^T x = y
        rhs[i] = (float(rhs[i]) - float(np.dot(g[i + 1:, i], rhs[i + 1:]))) / float(g[i, i])


def _rows_iadd(x: np.ndarray, y: np.ndarray) -> None:
    """x += y row by row (2-D in-place ufuncs on strided views may buffer, i.e. allocate)."""
    for i in range(x.shape[0]):
        np.add(x[i], y[i], out=x[i])
