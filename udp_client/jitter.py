"""Playout (jitter) buffer for all stems of a session, sans-IO and preallocated.

One playout clock for every stem: it is anchored by the first STEM block of *any* stem and
advances one sample per sample popped, so the stems never slip against each other. Blocks
are placed by media timestamp into a ring of `capacity` slots per stem. At its playout
point a missing block is concealed (stemlink.conceal; interpolated into the next block when
that one is already here); a block arriving after its playout point is late, dropped and
counted.

Delay. The buffer's delay E is how far playout runs behind the fastest arrival seen: with
d_i = (arrival_i - arrival_0) - (ts_i - ts_0)/rate the relative arrival delay of block i
and d_min its (slowly drifting) minimum, a block is on time iff d_i - d_min <= E.

- fixed mode (`JitterConfig(fixed_ms=M)`): E = M from the first block on, rounded up to
  whole blocks; nothing adapts.
- adaptive mode (default): the target T is the `quantile` of a forgetting histogram of
  d_i - d_min, plus `headroom_ms`. After an underrun (a block that arrives after it was
  concealed) T jumps at once to cover that block's delay, and playout stalls: the missing
  block is concealed without advancing the clock, so E grows by a block per stall, until
  E >= T. After `clean_s` without an underrun the jump decays (`decay_ms_per_s`) and, while
  E exceeds T by more than a block, playout is shortened by cutting one stretch of a block
  where it best matches itself later on, with a cross-fade (time-scale compression, at most
  one cut every `cut_every` blocks): it never shrinks by a click.

Stats report the mean added delay (mean E), concealed and inserted blocks, cut samples,
late blocks and underruns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemlink.conceal import DEFAULT_METHOD, Concealer
from stemlink.udp_client.mixrepair import MixtureRepair
from stemlink.wire.constants import Flags

HIST_BIN_S = 0.0005  # arrival-delay histogram resolution


@dataclass(frozen=True)
class JitterConfig:
    fixed_ms: float | None = None  # None: adaptive
    quantile: float = 0.999
    headroom_ms: float = 2.0  # on top of the quantile (covers the pop grain too)
    initial_ms: float = 20.0  # adaptive: E before any statistics
    min_ms: float = 0.0
    max_ms: float = 400.0
    forget: float = 0.9995  # per arrival: ~2000 blocks of memory (~6 s for 2 stems)
    clean_s: float = 2.0  # no underrun for this long before shrinking
    decay_ms_per_s: float = 2.0  # how fast a jump after an underrun decays once clean
    cut_every: int = 8  # blocks between two cuts while shrinking

    @property
    def adaptive(self) -> bool:
        return self.fixed_ms is None


@dataclass
class JitterStats:
    pushed: int = 0
    late: int = 0  # arrived after their playout point
    duplicates: int = 0
    too_early: int = 0  # beyond the ring: the sender runs ahead of playout
    concealed: int = 0  # stem blocks played from concealment
    underruns: int = 0  # playout points where a block was missing (per stem block)
    inserted: int = 0  # adaptive: blocks of concealment played while the clock stalled
    cut_samples: int = 0  # adaptive: samples removed by time-scale compression
    prefill: int = 0  # samples of silence played before playout started
    delay_s_sum: float = 0.0  # sum of E over popped blocks (mean = / delay_n)
    delay_n: float = 0.0
    target_max_ms: float = 0.0

    @property
    def mean_delay_ms(self) -> float:
        return 1000 * self.delay_s_sum / self.delay_n if self.delay_n else float("nan")


class JitterBuffer:
    def __init__(self, n_stems: int, channels: int, block: int, rate: int,
                 config: JitterConfig | None = None, capacity: int = 256,
                 conceal: str = DEFAULT_METHOD, max_pop: int = 8192,
                 tap: np.ndarray | None = None, mixture=None, delay: int = 0) -> None:
        """mixture: an object with `segment(ts, n) -> array [C, n] | None`, the input the
        client sent on the stems' timeline (output sample i <- input sample i - delay):
        enables udp_client.mixrepair; delay: the server's D, for CONCEALED input flags."""
        self.cfg = config or JitterConfig()
        if not 4 <= capacity:
            raise ValueError("capacity must be at least 4 blocks")
        self.n_stems, self.channels, self.block, self.rate = n_stems, channels, block, rate
        self.capacity = capacity
        b = block
        self._ring = np.zeros((capacity, n_stems, channels, b), np.float32)
        self._ts = np.full((capacity, n_stems), -1, np.int64)
        self._conc = [Concealer(channels, b, conceal, rate) for _ in range(n_stems)]
        self._fifo_len = max_pop + 2 * b
        self._fifo = np.zeros((n_stems, channels, self._fifo_len), np.float32)
        self._fifo2 = np.zeros_like(self._fifo)
        self._fill = 0
        self._blk = np.zeros((n_stems, channels, b), np.float32)
        self._mix = np.zeros(b, np.float32)
        nbins = int(self.cfg.max_ms / 1000 / HIST_BIN_S) + 2
        self._hist = np.zeros(nbins, np.float64)
        self._cum = np.zeros(nbins, np.float64)
        self._xf = min(b // 4, 64)  # cut cross-fade
        self._ramp = ((np.arange(self._xf, dtype=np.float32) + 0.5) / self._xf)
        self.tap = tap  # [n_stems, C, total]: what was played, by media position
        self.mixture, self.delay = mixture, delay
        self.repair = MixtureRepair(n_stems, channels, b) if mixture is not None else None
        self._suspect = np.full(256, -1, np.int64)  # blocks flagged CONCEALED (recent)
        self._suspect_i = 0
        self.play: int | None = None  # media timestamp of the next sample to play
        self._t0 = 0.0
        self._ts0 = 0
        self._dmin = 0.0
        self._hold_s = 0.0  # target floor set by an underrun, decays once clean
        self._last_underrun = -1e9
        self._last_now = 0.0
        self._since_cut = 0
        self._inserted_last = False
        self._inserted_s = 0.0  # inserted within this pop (E grows only as it plays)
        self._grain_s = 0.0  # the largest pop: a block must be here that much early
        self._target_s = self._initial_target()
        self.stats = JitterStats()

    # ---------------------------------------------------------------- queries
    @property
    def target_ms(self) -> float:
        return 1000 * self._target_s

    def delay_ms(self, now: float) -> float:
        """E: how far playout runs behind the fastest arrival path, now."""
        if self.play is None:
            return 1000 * self._target_s
        return 1000 * (self._delay_s(now) + self._fill / self.rate)

    def media_position(self) -> int | None:
        """The media position the next pop's first sample plays (None before the first
        block anchored the clock); it counts insertions and cuts, as delay_ms does."""
        return None if self.play is None else self.play - self._fill

    # ---------------------------------------------------------------- arrivals
    def push(self, stem: int, ts: int, block: np.ndarray, now: float, flags: int = 0) -> bool:
        b = self.block
        if flags & Flags.CONCEALED and self.repair is not None and stem == 0:
            # depends on input the server concealed: its stems may not add up
            self._suspect[self._suspect_i] = ts
            self._suspect_i = (self._suspect_i + 1) % self._suspect.shape[0]
        if ts % b or not 0 <= stem < self.n_stems:
            return False
        if self.play is None:  # the first block of any stem anchors the one clock
            self._t0, self._ts0, self._dmin = now, ts, 0.0
            self.play = ts - self._blocks(self._target_s) * b
        d = (now - self._t0) - (ts - self._ts0) / self.rate
        if d < self._dmin:
            self._dmin = d
        if self.cfg.adaptive:
            self._observe(d - self._dmin)
        # self.play is always a block start: the next block to play, its slot still holds
        # it; everything before it has been played (or concealed)
        cur = self.play
        if ts < cur:
            self.stats.late += 1
            if self.cfg.adaptive:  # an underrun: grow at once to cover this delay
                self._hold_s = max(self._hold_s, d - self._dmin + self.cfg.headroom_ms / 1e3)
                self._last_underrun = now
            return False
        if ts >= cur + self.capacity * b:  # would land in the slot of the block at cur
            self.stats.too_early += 1
            return False
        slot = (ts // b) % self.capacity
        if self._ts[slot, stem] == ts:
            self.stats.duplicates += 1
            return False
        self._ts[slot, stem] = ts
        np.copyto(self._ring[slot, stem], block)
        self.stats.pushed += 1
        return True

    # ---------------------------------------------------------------- playout
    def pop(self, out: np.ndarray, now: float) -> None:
        """Fill out [n_stems, channels, n] with the next n samples of playout."""
        n = out.shape[2]
        if self.play is None:
            out[...] = 0.0
            self.stats.prefill += n
            return
        self._last_now = now
        self._grain_s = max(self._grain_s, n / self.rate)
        # E for what is heard now: the first sample of this pop is play - fill
        e = self._delay_s(now) + self._fill / self.rate
        self.stats.delay_s_sum += e * n / self.block
        self.stats.delay_n += n / self.block
        if self.cfg.adaptive:
            self._update_target(now)
        self._inserted_s = 0.0
        while self._fill < n:
            self._produce(now, e)
        np.copyto(out, self._fifo[:, :, :n])
        rest = self._fill - n
        np.copyto(self._fifo2[:, :, :rest], self._fifo[:, :, n:self._fill])
        self._fifo, self._fifo2 = self._fifo2, self._fifo
        self._fill = rest

    def _produce(self, now: float, e: float) -> None:
        b, cfg = self.block, self.cfg
        play = self.play
        dst = self._fifo[:, :, self._fill:self._fill + b]
        if play < self._ts0:  # before the first block: silence, not concealment
            dst[...] = 0.0
            self.stats.prefill += b
            self._fill += b
            self.play += b
            return
        slot = (play // b) % self.capacity
        nslot = (slot + 1) % self.capacity
        present = self._ts[slot] == play
        if (cfg.adaptive and e + self._inserted_s + b / self.rate <= self._target_s
                and (not present.any() or not self._inserted_last)):
            # below target: stall (expand). A missing block is held back rather than
            # skipped; before a block that is here, one block of concealment interpolated
            # into it is inserted, alternating with real blocks so growth stays smooth
            for s in range(self.n_stems):
                self._conc[s].missing(dst[s], after=self._ring[slot, s] if present[s] else None)
            self.stats.inserted += 1
            self._inserted_s += b / self.rate
            self._inserted_last = True
            self._fill += b
            return
        self._inserted_last = False
        for s in range(self.n_stems):
            if present[s]:
                self._conc[s].good(self._ring[slot, s], dst[s])
            else:
                after = self._ring[nslot, s] if self._ts[nslot, s] == play + b else None
                self._conc[s].missing(dst[s], after=after)
                self.stats.concealed += 1
                self.stats.underruns += 1
            self._ts[slot, s] = -1
        if self.repair is not None:
            self._repair(dst, present, play)
        if self.tap is not None and play + b <= self.tap.shape[2]:
            np.copyto(self.tap[:, :, play:play + b], dst)
        self.play += b
        n_out = b
        self._since_cut += 1
        if (cfg.adaptive and present.all() and self._since_cut >= cfg.cut_every
                and now - self._last_underrun >= cfg.clean_s
                and e - self._target_s > b / self.rate):
            n_out = b - self._cut(dst)
        self._fill += n_out

    def _repair(self, dst: np.ndarray, present: np.ndarray, play: int) -> None:
        mix = self.mixture.segment(play, self.block)
        if mix is None:
            return
        rep = self.repair
        if not present.all():  # per band within the block (udp_client.mixrepair)
            rep.repair(dst, present, mix, bands=True)
            return
        flagged = self._flagged(play)
        rep.observe(dst, mix, clean=not flagged)  # (a median: robust to blocks that are off)
        if flagged:
            rep.repair_if_off(dst, mix, bands=True)

    def _flagged(self, play: int) -> bool:
        for ts in self._suspect:
            if ts == play:
                return True
        return False

    def _cut(self, dst: np.ndarray) -> int:
        """Remove L samples from the block in dst (all stems alike) where it best matches
        itself L later, cross-fading over the join. Returns L (0: no good match)."""
        b, xf = self.block, self._xf
        mix = self._mix
        np.copyto(mix, dst[0, 0])
        for s in range(self.n_stems):
            for c in range(self.channels):
                if s or c:
                    mix += dst[s, c]
        ref = mix[:xf]
        best, best_l = 0.0, 0
        lo, hi = max(xf // 2, 8), b - xf
        if float(np.dot(mix, mix)) < 1e-10 * b:  # silence: any cut is inaudible
            best, best_l = 1.0, hi
        else:
            best, best_l = self._match(mix, ref, lo, hi)
        if best < 0.5:
            return 0
        return self._cut_at(dst, best_l)

    def _match(self, mix: np.ndarray, ref: np.ndarray, lo: int, hi: int) -> tuple[float, int]:
        xf = self._xf
        best, best_l = 0.0, 0
        for lag in range(lo, hi + 1):  # normalised match of the first xf samples
            seg = mix[lag:lag + xf]
            den = float(np.dot(seg, seg)) * float(np.dot(ref, ref))
            if den <= 0.0:
                continue
            r = float(np.dot(seg, ref)) / den ** 0.5
            if r > best:
                best, best_l = r, lag
        return best, best_l

    def _cut_at(self, dst: np.ndarray, lag: int) -> int:
        b, xf = self.block, self._xf
        for s in range(self.n_stems):
            for c in range(self.channels):
                x = dst[s, c]
                # x[0:xf] fades into x[lag:lag+xf]; then x[lag+xf:] follows
                np.multiply(x[lag:lag + xf], self._ramp, out=self._mix[:xf])
                x[:xf] *= self._ramp[::-1]
                x[:xf] += self._mix[:xf]
                np.copyto(self._blk[s, c, :b - lag - xf], x[lag + xf:])
                np.copyto(x[xf:b - lag], self._blk[s, c, :b - lag - xf])
        self.stats.cut_samples += lag
        self._since_cut = 0
        return lag

    # ---------------------------------------------------------------- target
    def _initial_target(self) -> float:
        c = self.cfg
        t = c.fixed_ms if c.fixed_ms is not None else c.initial_ms
        return min(max(t, c.min_ms), c.max_ms) / 1000

    def _blocks(self, seconds: float) -> int:
        return max(1, -(-int(round(seconds * self.rate)) // self.block))

    def _delay_s(self, now: float) -> float:
        nominal = (now - self._t0 - self._dmin) + self._ts0 / self.rate
        return nominal - self.play / self.rate

    def _observe(self, r: float) -> None:
        f = self.cfg.forget
        self._hist *= f
        i = min(max(int(r / HIST_BIN_S), 0), self._hist.shape[0] - 1)
        self._hist[i] += 1.0 - f

    def _update_target(self, now: float) -> None:
        c = self.cfg
        total = float(self._hist.sum())
        if total > 0:
            np.cumsum(self._hist, out=self._cum)
            i = int(np.searchsorted(self._cum, c.quantile * total))
            t_hist = (i + 1) * HIST_BIN_S + c.headroom_ms / 1000 + self._grain_s
        else:
            t_hist = self._initial_target()
        if now - self._last_underrun >= c.clean_s and self._hold_s > 0:
            self._hold_s = max(0.0, self._hold_s - c.decay_ms_per_s / 1000 * self.block
                               / self.rate)
        t = max(t_hist, self._hold_s)
        self._target_s = min(max(t, c.min_ms / 1000), c.max_ms / 1000)
        self.stats.target_max_ms = max(self.stats.target_max_ms, 1000 * self._target_s)
