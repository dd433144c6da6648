"""The streaming separator: push PCM blocks of any size, get stem blocks of the same size.

Sans-IO: no clocks, sockets or threads. Output sample i of every stem corresponds to input
sample i - D exactly, with D = support + (H - 1) * hop + L * hop - 1 (see `Latency`).
Everything the hot path touches is allocated in __init__; process() only copies into and
out of it.

Two time grids. The model was trained on frames of n_fft samples spaced by its hop (1024
for Spleeter) and always sees W such frames spaced by its hop. Synthesis runs on a finer
grid of m samples (the synthesis hop, a divisor of the model's hop): every m samples a
frame of n_fft samples ending at that boundary is analysed, masked and overlap-added.
Model input for the inference due at boundary t is the W frames t, t - R, t - 2R, ...
(R = hop / m synthesis frames per model hop), so the newest frame ends at the current
m-boundary and the spacing is the model's own. One inference runs every H * k * m
samples: H frames batched (only at m = hop) or the newest mask held for k synthesis hops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemlink.engine import dsp
from stemlink.engine.backend import Backend
from stemlink.engine.card import ModelCard
from stemlink.engine.errors import EngineError
from stemlink.engine.presets import StreamConfig


@dataclass(frozen=True)
class Latency:
    """Algorithmic delay, in samples, by the buffer that causes it:

        D = support + (H - 1) * hop + L * hop - 1

    - support: the synthesis window spans the last `support` samples of a frame, and the
      oldest m samples of it are final only once the whole frame has arrived: n_fft for
      standard Hann overlap-add, 2m for asymmetric synthesis at synthesis hop m;
    - batching: H model frames are gathered per inference, the oldest waits (H-1) hops;
    - lookahead: each emitted frame had L newer model frames in its window: L hops;
    - hold: the mask hold k adds no delay. A held mask is the newest mask, applied to the
      k - 1 frames after the one it was computed for: older information (a fidelity cost),
      never a wait. It changes the compute budget instead: one inference per `period`;
    - convention: -1, because output sample i leaves in the same call as input sample i.
    """

    support: int
    batching: int
    lookahead: int
    sample_rate: int
    synthesis_hop: int = 0  # m, samples
    mask_hold: int = 1  # k, synthesis hops per inference
    period: int = 0  # samples between inferences: H * k * m

    @property
    def samples(self) -> int:
        return self.support + self.batching + self.lookahead - 1

    @property
    def ms(self) -> float:
        return 1000.0 * self.samples / self.sample_rate

    @property
    def period_ms(self) -> float:
        return 1000.0 * self.period / self.sample_rate

    def describe(self) -> str:
        return (f"D = {self.samples} samples = {self.ms:.1f} ms (support {self.support} + "
                f"batching {self.batching} + look-ahead {self.lookahead} - 1); synthesis "
                f"hop m = {self.synthesis_hop}, mask hold k = {self.mask_hold}: one inference "
                f"every {self.period} samples ({self.period_ms:.1f} ms)")


def latency_of(card: ModelCard, config: StreamConfig) -> Latency:
    """D of a configuration, without building a separator."""
    hop = card.hop
    m = config.hop(hop)
    return Latency(dsp.synthesis_support(config.synthesis, card.n_fft, m),
                   (config.hop_frames - 1) * hop, config.lookahead * hop, card.sample_rate,
                   m, config.mask_hold, config.hop_frames * config.mask_hold * m)


@dataclass
class StreamStats:
    frames: int = 0  # synthesis frames (every m samples)
    inferences: int = 0
    skipped_inferences: int = 0  # inferences due but not run by skip() (stale output)
    advanced: int = 0  # samples jumped over in O(1) by advance()
    nonfinite_blocks: int = 0  # blocks that carried NaN/Inf; those samples became 0


class StreamingSeparator:
    """One stream's state. Uses `backend.inputs[slot]` / `backend.outputs[slot]`, so several
    separators can share one batched backend; `process()` runs inference itself.

    Buffers (n = n_fft, m = synthesis hop, hop = the model's, R = hop/m, per channel) and
    the delay each adds:
    - input line, 2n samples: holds the frame being completed; a frame is analysed when its
      last m samples are in, so the oldest output chunk waits for the synthesis support (n,
      or 2m asymmetric): `Latency.support`;
    - magnitude ring, R x W frames (one row of W per residue of the frame index mod R): the
      model's context, spaced by the model's hop, adds nothing (it looks back only);
    - spectra pending, L*R + H frames: H frames per inference, L model frames of
      look-ahead: `Latency.batching` = (H-1)*hop and `Latency.lookahead` = L*hop;
    - held mask, one frame: applied to the k-1 frames after each inference, adds nothing;
    - overlap-add ring, n samples: finished when its oldest chunk is final, adds nothing;
    - output FIFO: pre-filled with D - support + m zeros, the frames before the stream
      start, so that every call returns exactly as many samples as it was given.
    """

    def __init__(self, card: ModelCard, backend: Backend, config: StreamConfig,
                 slot: int = 0, max_block: int = 4096) -> None:
        w = card.window_frames
        config.validate(w, card.hop)
        if backend.inputs.shape[1:] != (card.channels, w, card.bins):
            raise EngineError("backend buffers do not match the model card (activate it first)")
        if not 0 <= slot < backend.inputs.shape[0]:
            raise EngineError(f"slot {slot} is outside the backend's batch")
        self.card, self.backend, self.config, self.slot = card, backend, config, slot
        n, hop = card.n_fft, card.hop
        m = config.hop(hop)
        c, s, f, nb = card.channels, len(card.stems), card.bins, card.n_bins
        self._n, self._m, self._w, self._f = n, m, w, f
        self._rr = hop // m  # synthesis frames per model hop
        self._h, self._l, self._k = config.hop_frames, config.lookahead, config.mask_hold
        self._lr = self._l * self._rr  # look-ahead in synthesis frames
        self._chunks = n // m
        self.latency = latency_of(card, config)
        # Windows are tiled to the full shape of what they multiply: numpy allocates
        # iteration buffers for broadcast products, never for same-shape ones.
        pair = dsp.window_pair(config.synthesis, n, m)
        self._asym = config.synthesis != "standard"
        self._ana_win = np.tile(pair.analysis, (c, 1))
        # The model sees the magnitude of the spectrum that is masked, scaled to the Hann
        # window's sum (the level it was trained on); "hann" input needs a second FFT.
        self._two_ffts = self._asym and config.model_input == "hann"
        self._model_win = np.tile(dsp.hann(n).astype(np.float32), (c, 1))
        self._scale = 1.0
        if self._asym and not self._two_ffts:
            self._scale = float(dsp.hann(n).sum() / pair.analysis.astype(np.float64).sum())
        support = pair.support
        self._syn_tail = np.tile(pair.synthesis[n - support:], (s * c, 1))  # per row
        self._support = support
        # --- input: linear buffer of 2n samples; frame = the n samples before _pos.
        self._lin = np.zeros((c, 2 * n), np.float32)
        self._pos = n  # virtual zeros before the stream start fill the first frames
        self._fill = 0  # samples of the current synthesis hop received so far
        self._j = 0  # index of the next frame to complete
        # --- analysis. The forward FFT runs in float64: numpy's rfft would otherwise cast
        # float32 through temporaries, an allocation per frame on the hot path.
        self._tmp32 = np.zeros((c, n), np.float32)
        self._tmp64 = np.zeros((c, n), np.float64)
        self._spec = np.zeros((c, nb), np.complex128)
        self._absbuf = np.zeros((c, f), np.float64)
        self._mag = np.zeros((self._rr, c, w, f), np.float32)  # [t % R, :, (t // R) % W]
        self._r = self._lr + self._h  # frames awaiting their mask
        self._syn_spec = np.zeros((self._r, c, nb), np.complex64)
        # --- synthesis. Masks are written twice per bin (re, im) so that masking is a
        # float32 * float32 product on a view of the complex spectrum: no casts.
        self._mfull = np.zeros((s, c, nb, 2), np.float32)  # bins >= f stay 0 for "zeros"
        self._avg = np.zeros((s, c, 1), np.float32)
        self._y_spec = np.zeros((s, c, nb), np.complex64)
        self._y_spec_f = self._y_spec.view(np.float32).reshape(s, c, nb, 2)
        self._syn_f = self._syn_spec.view(np.float32).reshape(self._r, 1, c, nb, 2)
        self._y = np.zeros((s, c, n), np.float32)
        self._ola = np.zeros((s, c, n), np.float32)  # ring indexed by grid sample mod n
        self._y_rows = self._y.reshape(s * c, n)
        self._ola_rows = self._ola.reshape(s * c, n)
        self._q0 = (n - support) // m  # first chunk of a frame the synthesis covers
        # --- output FIFO, pre-filled with the zeros that stand for frames before the start
        self._prefill = self.latency.samples - support + m
        self._cap = self._prefill + (self._h + 2) * m + 1
        self._fifo = np.zeros((s, c, self._cap), np.float32)
        self._rd, self._level = 0, self._prefill
        self._out = np.zeros((s, c, max_block), np.float32)
        # the newest applied mask: used for the k-1 frames after each inference, and for
        # frames whose inference skip() leaves out
        self._held = np.zeros((s, c, f), np.float32)
        self._silence: np.ndarray | None = None  # the model's mask for silence (advance)
        self._infer = True
        # the block being processed (begin/run/resume): where run() stopped, and the
        # samples of the hop that completed the frame whose inference is due
        self._block: np.ndarray | None = None
        self._done = self._total = self._step = 0
        self._waiting = False
        self.stats = StreamStats()

    # ------------------------------------------------------------------ public
    @property
    def delay(self) -> int:
        """D in samples: output sample i corresponds to input sample i - D."""
        return self.latency.samples

    @property
    def memory(self) -> int:
        """Samples after which the output no longer depends on older input: the model's
        window of W hops, the frame itself, the output delay and one inference period
        (the last inference inside a silence this long saw only silence, so the mask it
        left held is the model's answer to silence). A silence at least this long leaves
        every buffer at zero and the held mask at that answer: `advance()` jumps there."""
        return self._w * self.card.hop + self._n + self.delay + self.latency.period

    def bind(self, backend: Backend, slot: int = 0) -> None:
        """Run this stream's own inferences (process(), advance()) on another backend of
        the same model: a server worker's. Between blocks only."""
        if backend.inputs.shape[1:] != self.backend.inputs.shape[1:]:
            raise EngineError("bind(): that backend runs another model shape")
        if not 0 <= slot < backend.inputs.shape[0]:
            raise EngineError(f"slot {slot} is outside the backend's batch")
        if self._waiting:
            raise EngineError("bind() while an inference is due")
        self.backend, self.slot = backend, slot

    def skip(self, block: np.ndarray) -> np.ndarray:
        """Like process(), but without running the model: the STFT context is kept exact
        (later windows see this input), while frames that would have been masked by this
        block's inferences reuse the newest mask. For input whose output is no longer
        wanted (its deadline passed): it costs FFTs per hop instead of an inference."""
        self.begin(block, infer=False)
        self.run()  # never stops for an inference: there is none to run
        return self.result()

    def advance(self, n: int) -> None:
        """Jump over n >= `memory` samples of silence in O(1), no output: the state becomes
        exactly what processing n zero samples would leave (every buffer at zero, the held
        mask the model's answer to silence), with the frame and output positions moved
        on, so alignment (output i <-> input i - D) holds. The first call runs the model
        once on silence (then cached)."""
        if n < self.memory:
            raise EngineError(f"advance() needs at least {self.memory} samples, not {n}")
        silence = self._silence_mask()
        m, h, lr = self._m, self._h, self._lr
        frames = (self._fill + n) // m
        synth_before = max(0, (self._j // h) * h - lr)
        self._j += frames
        synth_after = max(0, (self._j // h) * h - lr)
        self._fill = (self._fill + n) % m
        for buf in (self._lin, self._mag, self._syn_spec, self._ola, self._fifo):
            buf[...] = 0
        np.copyto(self._held, silence)
        self._pos = self._n + self._fill
        self._rd = 0
        self._level += m * (synth_after - synth_before) - n
        if not 0 <= self._level <= self._cap:
            raise EngineError("output FIFO accounting error in advance()")
        self.stats.frames += frames
        self.stats.advanced += n

    def process(self, block: np.ndarray) -> np.ndarray:
        """block: float32 [C, n] -> view [S, C, n] valid until the next call."""
        self.begin(block)
        while not self.run():
            self.infer_alone()
        return self.result()

    def infer_alone(self) -> None:
        """Run the due inference on this stream's own backend slot: a batch of one."""
        self.stage(self.backend.inputs[self.slot])
        self.backend.infer()
        self.resume(self.backend.outputs[self.slot])

    # A block can also be processed in steps, so that one caller can gather the windows
    # due in many streams into one batched inference (the server's batching worker):
    #     sep.begin(block)
    #     while not sep.run():        # stopped: an inference is due
    #         sep.stage(batch_inputs[i]); ...run the batch...; sep.resume(batch_outputs[i])
    #     y = sep.result()
    # process() is exactly that with a batch of one, so both give the same output.

    def begin(self, block: np.ndarray, infer: bool = True) -> None:
        """Start processing a block; `infer=False`: skip() semantics."""
        if block.ndim != 2 or block.shape[0] != self.card.channels:
            raise EngineError(f"block must be [{self.card.channels}, n], not {list(block.shape)}")
        if self._waiting:
            raise EngineError("begin() while an inference is still due: resume() first")
        total = block.shape[1]
        if total > self._out.shape[2]:
            self._out = np.zeros(self._out.shape[:2] + (total,), np.float32)
        self._block, self._done, self._total, self._infer = block, 0, total, infer

    def run(self) -> bool:
        """Process the begun block until it is used up (True) or an inference is due
        (False): then stage() the window, run the model, and resume() with its masks."""
        if self._waiting:
            raise EngineError("run() while an inference is due: resume() first")
        block, total, out = self._block, self._total, self._out
        while self._done < total:
            done = self._done
            k = min(self._m - self._fill, total - done)
            dst = self._lin[:, self._pos:self._pos + k]
            np.copyto(dst, block[:, done:done + k], casting="same_kind")
            if not all(np.isfinite(np.add.reduce(row)) for row in dst):  # 1-D: no buffers
                np.nan_to_num(dst, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                self.stats.nonfinite_blocks += 1
            self._pos += k
            self._fill += k
            if self._fill == self._m:
                self._fill = 0
                self._frame_complete()
                if self._waiting:
                    self._step = k
                    return False
            self._pop(out[:, :, done:done + k])
            self._done = done + k
        self._block = None
        return True

    def resume(self, masks: np.ndarray) -> None:
        """Hand over the masks [S, C, W, bins] of the window stage() copied out; run() goes
        on from there."""
        if not self._waiting:
            raise EngineError("resume() without an inference due")
        self._waiting = False
        self.complete(masks)
        done, k = self._done, self._step
        self._pop(self._out[:, :, done:done + k])
        self._done = done + k

    @property
    def waiting(self) -> bool:
        """An inference is due: stage() / resume() before run() goes on."""
        return self._waiting

    def result(self) -> np.ndarray:
        """The begun block's output: a view [S, C, n] valid until the next begin()."""
        return self._out[:, :, :self._total]

    def flush(self) -> np.ndarray:
        """Push D samples of silence: returns the last D output samples of the stream."""
        return self.process(np.zeros((self.card.channels, self.delay), np.float32)).copy()

    # ------------------------------------------------------------------ frames
    def _frame_complete(self) -> None:
        n, t, rr = self._n, self._j, self._rr
        frame = self._lin[:, self._pos - n:self._pos]
        self._rfft(frame, self._ana_win)  # the spectrum that will be masked
        np.copyto(self._syn_spec[t % self._r], self._spec)
        if self._two_ffts:
            self._rfft(frame, self._model_win)
        for ch in range(self._spec.shape[0]):  # 1-D rows: no iteration buffers
            np.abs(self._spec[ch, :self._f], out=self._absbuf[ch])
        if self._scale != 1.0:
            np.multiply(self._absbuf, self._scale, out=self._absbuf)
        np.copyto(self._mag[t % rr, :, (t // rr) % self._w, :], self._absbuf)
        if self._pos == 2 * n:  # keep the newest n samples, non-overlapping copy
            for row in self._lin:  # per row: numpy copies 2-D same-base slices via a temp
                np.copyto(row[:n], row[n:])
            self._pos = n
        self.stats.frames += 1
        self._j += 1
        if (t + 1) % self._h:
            return  # gathering frames for a batched inference (H > 1)
        # one inference per H*k frames, on frames that end where the model's own frames
        # do (multiples of H*k*m samples); until the first one the held mask is zero
        if (t + 1) % (self._h * self._k) == 0:
            if self._infer:  # the caller stages this window, runs it and resumes
                self._waiting = True
                return
            self.stats.skipped_inferences += 1
        for f in self._due(t):  # mask hold, or an inference left out by skip()
            self._synthesise(f, self._held)

    def _due(self, t: int) -> range:
        """Frames whose mask is decided once frame t is complete."""
        newest = t - self._lr
        return range(max(0, newest - self._h + 1), newest + 1)

    def _rfft(self, frame: np.ndarray, window: np.ndarray) -> None:
        for ch in range(frame.shape[0]):  # frame rows are strided views into _lin
            np.multiply(frame[ch], window[ch], out=self._tmp32[ch])
        np.copyto(self._tmp64, self._tmp32)
        np.fft.rfft(self._tmp64, axis=-1, out=self._spec)

    def stage(self, dst: np.ndarray) -> None:
        """Copy the W model frames of the newest completed frame t into a model input slot,
        oldest first: frames t - (W-1)R, ..., t - R, t (one residue row of the ring)."""
        t = self._j - 1
        row = self._mag[t % self._rr]
        s = (t // self._rr) % self._w
        cut = self._w - 1 - s
        np.copyto(dst[:, :cut], row[:, s + 1:])
        np.copyto(dst[:, cut:], row[:, :s + 1])

    def complete(self, masks: np.ndarray) -> None:
        """Apply masks [S, C, W, bins] of the last staged window to the frames that are now
        final and move their oldest chunk of output into the FIFO."""
        t = self._j - 1
        self.stats.inferences += 1
        for f in self._due(t):
            self._synthesise(f, masks[:, :, self._w - 1 - (t - f) // self._rr, :])

    def _silence_mask(self) -> np.ndarray:
        if self._silence is None:
            dst = self.backend.inputs[self.slot]
            dst[...] = 0.0
            self.backend.infer()
            self._silence = self.backend.outputs[self.slot][:, :, self._w - 1 - self._l,
                                                            :].copy()
        return self._silence

    def _synthesise(self, f: int, mask: np.ndarray) -> None:
        m, ch, fb = self._m, self._chunks, self._f
        np.copyto(self._mfull[:, :, :fb, 0], mask)
        np.copyto(self._mfull[:, :, :fb, 1], mask)
        if mask is not self._held:
            np.copyto(self._held, mask)
        if self.card.mask_extension == "average":
            np.mean(mask, axis=-1, keepdims=True, out=self._avg)
            self._mfull[:, :, fb:, 0] = self._avg
            self._mfull[:, :, fb:, 1] = self._avg
        np.multiply(self._syn_f[f % self._r], self._mfull, out=self._y_spec_f)
        np.fft.irfft(self._y_spec, n=self._n, axis=-1, out=self._y)
        y, ola, tail = self._y_rows, self._ola_rows, self._n - self._support
        for row in range(y.shape[0]):  # 1-D rows: a strided 3-D product would allocate
            dst = y[row, tail:]
            np.multiply(dst, self._syn_tail[row], out=dst)
        for q in range(self._q0, ch):  # row by row: 1-D adds need no iteration buffers
            at = ((f - ch + 1 + q) % ch) * m
            for row in range(y.shape[0]):
                dst = ola[row, at:at + m]
                np.add(dst, y[row, q * m:(q + 1) * m], out=dst)
        at = ((f - ch + 1 + self._q0) % ch) * m
        self._push(self._ola[:, :, at:at + m])
        self._ola[:, :, at:at + m] = 0.0

    # ------------------------------------------------------------------ FIFO
    def _push(self, chunk: np.ndarray) -> None:
        n = chunk.shape[2]
        if self._level + n > self._cap:
            raise EngineError("output FIFO overflow (internal accounting error)")
        wr = (self._rd + self._level) % self._cap
        a = min(n, self._cap - wr)
        self._fifo[:, :, wr:wr + a] = chunk[:, :, :a]
        if a < n:
            self._fifo[:, :, :n - a] = chunk[:, :, a:]
        self._level += n

    def _pop(self, dst: np.ndarray) -> None:
        n = dst.shape[2]
        if n > self._level:
            raise EngineError("output FIFO underflow (internal accounting error)")
        a = min(n, self._cap - self._rd)
        dst[:, :, :a] = self._fifo[:, :, self._rd:self._rd + a]
        if a < n:
            dst[:, :, a:] = self._fifo[:, :, :n - a]
        self._rd = (self._rd + n) % self._cap
        self._level -= n
