"""Streaming for the segment families (HTDemucs, MDX-Net): the model sees one fixed
segment of the newest `segment` input samples every `stride` samples; each run's output
over a region of the segment is weighted and overlap-added; a sample leaves once no later
run can touch it.

Sans-IO, same interface as `StreamingSeparator`: `process(block [C, n]) -> view [S, C, n]`,
`flush()`, `delay`, `latency`, `stats`. Output sample i is the separation of input sample
i - D, exactly.

Two modes (`ChunkConfig`):
- whole segment (`quality`): runs at input times segment + k*stride, every run's whole
  output weighted by the same triangle as demucs.apply.apply_model (overlap 1 - stride /
  segment), normalised by the summed weights. Every sample away from the file's end is
  then exactly what the offline reference (engine/offline_chunked.py) computes.
  D = segment - 1: a sample is final only when the last segment covering it has arrived.
- low delay: runs every `stride` samples on the newest segment and keeps only the region
  [segment - A - 2*stride, segment - A) of its output (A = look-ahead samples), cross-faded
  with a triangle of 2*stride. The model sees a whole segment of past context but only A
  samples of future. D = A + 2*stride - 1.

Allocation: the per-block path (copy in, divide out of the accumulator) allocates nothing;
an inference (once per stride, i.e. per H hops of audio) runs the segment runner, whose
numpy STFT/iSTFT of a whole segment allocate their temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError
from stemlink.engine.segments import SegmentRunner

OVERLAP = 0.25  # demucs.apply.apply_model's default


def triangle(n: int) -> np.ndarray:
    """apply_model's weight: rises 1..n/2, falls back, peak normalised to 1."""
    w = np.concatenate([np.arange(1, n // 2 + 1), np.arange(n - n // 2, 0, -1)])
    return (w / w.max()).astype(np.float32)


def whole_stride(segment: int) -> int:
    return int((1 - OVERLAP) * segment)


@dataclass(frozen=True)
class ChunkConfig:
    """Streaming set-up of a segment family, in units of the card's hop where the wire
    reports it. hop_frames: runs every H hops (low delay); lookahead: L hops of future
    context; whole: use the whole segment (offline-equivalent, H and L then ignored)."""

    hop_frames: int
    lookahead: int
    whole: bool = False
    synthesis: str = "standard"  # wire field; segment families have one synthesis mode

    def geometry(self, card: ModelCard) -> tuple[int, int, int]:
        """(stride, region offset in the segment, region length), samples."""
        n = card.segment
        if self.whole:
            return whole_stride(n), 0, n
        stride, ahead = self.hop_frames * card.hop, self.lookahead * card.hop
        if self.hop_frames < 1 or self.lookahead < 0 or ahead + 2 * stride > n:
            raise EngineError(
                f"H = {self.hop_frames}, L = {self.lookahead} hops do not fit the segment: "
                f"need 2*H + L <= {n // card.hop} hops")
        return stride, n - ahead - 2 * stride, 2 * stride


@dataclass(frozen=True)
class ChunkLatency:
    """D = segment - offset - 1: the first sample of a run's region is final as soon as
    that run is done, which is when its newest input sample (segment - offset - 1 samples
    later) has arrived. For low delay that is look-ahead + 2*stride - 1."""

    segment: int
    stride: int
    region: int
    offset: int
    sample_rate: int

    @property
    def samples(self) -> int:
        return self.segment - self.offset - 1

    @property
    def support(self) -> int:
        """As StreamingSeparator's: input sample j first reaches output index
        j + D - support + 1 = j (the model looks a whole segment back and ahead)."""
        return self.samples + 1

    @property
    def reach(self) -> int:
        """Input sample j reaches output indices up to j + D + reach - 1 (the last run
        whose segment holds j ends `segment` later; its region ends offset + region in)."""
        return self.offset + self.region

    @property
    def ms(self) -> float:
        return 1000.0 * self.samples / self.sample_rate

    def describe(self) -> str:
        return (f"D = {self.samples} samples = {self.ms:.1f} ms (segment {self.segment}, "
                f"a run every {self.stride}, region {self.region} ending "
                f"{self.segment - self.offset - self.region} before the segment's end)")


def chunk_latency(card: ModelCard, config: ChunkConfig) -> ChunkLatency:
    stride, off, region = config.geometry(card)
    return ChunkLatency(card.segment, stride, region, off, card.sample_rate)


@dataclass
class ChunkStats:
    frames: int = 0  # input samples / hop, for parity with StreamStats
    inferences: int = 0
    skipped_inferences: int = 0  # runs advance() jumped over (silence in, silence out)
    nonfinite_blocks: int = 0


class ChunkedSeparator:
    """Buffers (per channel) and what they add:
    - input line, 2*segment samples: the newest segment, zeros before the stream start;
    - accumulator ring of 2*segment samples (weighted sums and weights): holds each run's
      region until no later run reaches it; its wait is D;
    - no output FIFO: output sample p = acc/weight at p once p + D input samples are in;
      positions before 0 are the zeros D stands for.
    """

    def __init__(self, card: ModelCard, runner: SegmentRunner, config: ChunkConfig) -> None:
        self.card, self.runner, self.config = card, runner, config
        self.latency = chunk_latency(card, config)
        n = card.segment
        c, s = card.channels, len(card.stems)
        self._n = n
        self._stride, self._off, self._region = config.geometry(card)
        self._w = triangle(self._region)
        self._lin = np.zeros((c, 2 * n), np.float32)
        self._pos = n  # write position in _lin; the segment is _lin[:, _pos - n:_pos]
        self._t = 0  # input samples consumed
        self._next = n if config.whole else self._stride  # input count of the next run
        self._cap = 2 * n
        self._acc = np.zeros((s, c, self._cap), np.float32)
        self._wsum = np.zeros((self._cap,), np.float32)
        self._final = 0  # positions below this are final
        self._out = np.zeros((s, c, 4096), np.float32)
        self.stats = ChunkStats()

    @property
    def delay(self) -> int:
        return self.latency.samples

    @property
    def memory(self) -> int:
        """Samples of silence after which no earlier input reaches any pending output:
        a segment of input plus one region of pending output."""
        return self._n + self._region

    def skip(self, block: np.ndarray) -> np.ndarray:
        """For input whose output is no longer wanted. A segment run feeds the regions of
        the runs around it, so leaving one out would change later output: this runs it
        (exact output, no saving)."""
        return self.process(block)

    def advance(self, n: int) -> None:
        """Jump over n >= memory samples of silence, no output: the state becomes what
        processing n zeros leaves, for models that map a silent segment to silence
        (HTDemucs: its normalisation makes the output exactly 0; an MDX graph with biases
        may not, and then this is that model's output minus its response to silence)."""
        if n < self.memory:
            raise EngineError(f"advance() needs at least {self.memory} samples, not {n}")
        t1 = self._t + n
        self._lin[...] = 0.0
        self._pos = self._n
        self._acc[...] = 0.0
        self._wsum[...] = 0.0
        first = self._n if self.config.whole else self._stride
        nxt = first + max(0, -(-(t1 + 1 - first) // self._stride)) * self._stride
        self.stats.skipped_inferences += max(0, (nxt - self._next) // self._stride)
        self._next, self._t = nxt, t1
        # the silent runs' weights on the output still pending (positions >= t1 - D)
        pending = t1 - self.delay
        t = nxt - self._stride
        while t >= first and t - self._n + self._off + self._region > pending:
            lo = t - self._n + self._off
            a = max(0, pending - lo)
            self._add(lo + a, lo + self._region, None, self._w[a:])
            t -= self._stride
        self._final = self._next - self._n + self._off
        self.stats.frames = self._t // self.card.hop

    def process(self, block: np.ndarray) -> np.ndarray:
        """block: float32 [C, n] -> view [S, C, n] valid until the next call."""
        if block.ndim != 2 or block.shape[0] != self.card.channels:
            raise EngineError(f"block must be [{self.card.channels}, n], not {list(block.shape)}")
        total = block.shape[1]
        if total > self._out.shape[2]:
            self._out = np.zeros(self._out.shape[:2] + (total,), np.float32)
        out = self._out[:, :, :total]
        done = 0
        while done < total:
            k = min(self._next - self._t, total - done, 2 * self._n - self._pos)
            dst = self._lin[:, self._pos:self._pos + k]
            np.copyto(dst, block[:, done:done + k], casting="same_kind")
            if not np.isfinite(dst).all():
                np.nan_to_num(dst, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                self.stats.nonfinite_blocks += 1
            self._pos += k
            self._t += k
            if self._t == self._next:
                self._run()
            if self._pos == 2 * self._n:  # keep the newest segment: non-overlapping copy
                for row in self._lin:
                    np.copyto(row[:self._n], row[self._n:])
                self._pos = self._n
            self._pop(self._t - k - self.delay, out[:, :, done:done + k])
            done += k
        self.stats.frames = self._t // self.card.hop
        return out

    def flush(self) -> np.ndarray:
        """Push D samples of silence: returns the last D output samples of the stream."""
        return self.process(np.zeros((self.card.channels, self.delay), np.float32)).copy()

    def _run(self) -> None:
        y = self.runner.run(self._lin[:, self._pos - self._n:self._pos])
        start = self._t - self._n + self._off  # stream position of the region's first sample
        a = max(0, -start)  # the part before the stream start is dropped
        lo, hi = start + a, start + self._region
        self._add(lo, hi, y[:, :, self._off + a:self._off + self._region], self._w[a:])
        self.stats.inferences += 1
        self._next += self._stride
        self._final = self._next - self._n + self._off

    def _add(self, lo: int, hi: int, y: np.ndarray | None, w: np.ndarray) -> None:
        """Accumulate y * w (y None: a silent run, weights only) at positions [lo, hi)."""
        done = 0
        while lo + done < hi:
            at = (lo + done) % self._cap
            k = min(hi - lo - done, self._cap - at)
            if y is not None:
                self._acc[:, :, at:at + k] += y[:, :, done:done + k] * w[done:done + k]
            self._wsum[at:at + k] += w[done:done + k]
            done += k

    def _pop(self, p: int, dst: np.ndarray) -> None:
        n = dst.shape[2]
        if p + n > max(self._final, 0):
            raise EngineError("output not final yet (internal accounting error)")
        if p < 0:  # before the stream start: the zeros that D stands for
            z = min(n, -p)
            dst[:, :, :z] = 0.0
            dst, p, n = dst[:, :, z:], 0, n - z
        done = 0
        while done < n:
            at = (p + done) % self._cap
            k = min(n - done, self._cap - at)
            np.divide(self._acc[:, :, at:at + k], self._wsum[at:at + k],
                      out=dst[:, :, done:done + k])
            self._acc[:, :, at:at + k] = 0.0
            self._wsum[at:at + k] = 0.0
            done += k
