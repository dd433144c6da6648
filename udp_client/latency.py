"""Input-to-output latency of `live`, stated on the sound card's own frame clock (sans-IO).

The capture callback reports how many device frames it has delivered; the playback callback
reports which media position (model-rate stem timestamp) its first output sample plays.
Stem sample s is the separation of input sample s - D, so the input frame aligned with
the playback buffer's first frame (the first frame of the newest capture buffer: on JACK,
both callbacks run in the same process cycle, capture first) is heard

    total = D + capture position (model rate) - playout position   model samples

later. That single figure accounts for every buffer between the two callbacks: capture
block, network, compute and queueing at start (which fix where a fixed playout anchors),
D, the jitter buffer, the output carry and both resamplers' held samples. It is taken once
playout has started and again at the end; the two differ only if capture frames were
dropped (overruns) or the playout clock was moved. The adaptive playout buffer moves it
on purpose (it grows after a late block and shrinks by time-scale compression), so the
account also keeps the total over time: every `every` captured device frames (0.1 s by
default) it records (capture frame, total) in a preallocated ring of `capacity` points
(the latest hour at the default). Not included, because the device
measures them, not us: the device's own input and output buffering (PortAudio's
`latency` of each stream), stated alongside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SERIES_EVERY_S = 0.1  # the total is recorded this often (capture time)
SERIES_CAPACITY = 36000  # points kept: an hour at SERIES_EVERY_S


@dataclass
class LatencyAccount:
    model_rate: int
    device_rate: int
    delay: int  # D, model samples
    jitter_samples: int  # the jitter buffer's stated delay, model samples
    captured: int = 0  # device frames delivered by the capture callback so far
    capture_start: int = 0  # device frames delivered before the newest capture buffer
    first_samples: float | None = None  # total, model samples, when playout started
    last_samples: float | None = None  # total at the latest playback callback
    resampler_out_held: float = 0.0  # device samples held by the output resampler + carry
    every: int = 0  # device frames between two recorded points (0: SERIES_EVERY_S)
    capacity: int = SERIES_CAPACITY
    _frames: np.ndarray = field(init=False, repr=False)  # capture frame of each point
    _totals: np.ndarray = field(init=False, repr=False)  # total, model samples
    _n: int = field(default=0, init=False, repr=False)  # points recorded in all
    _next: int = field(default=0, init=False, repr=False)  # capture frame of the next point

    def __post_init__(self) -> None:
        if self.every <= 0:
            self.every = max(1, int(round(SERIES_EVERY_S * self.device_rate)))
        self._frames = np.zeros(self.capacity, np.int64)
        self._totals = np.zeros(self.capacity, np.float64)

    def on_capture(self, frames: int) -> None:
        """Capture callback: `frames` device frames delivered (plain int stores only)."""
        self.capture_start = self.captured
        self.captured += frames

    def on_playout(self, play_position: float, held_device: float) -> None:
        """Playback callback, before it pops: `play_position` is the next media position
        the jitter buffer will pop; `held_device` device samples already produced (carry,
        resampler) play before it."""
        ratio = self.model_rate / self.device_rate
        position = play_position - held_device * ratio
        total = self.delay + self.capture_start * ratio - position
        if self.first_samples is None:
            self.first_samples = total
            self.resampler_out_held = held_device
            self._next = self.capture_start
        self.last_samples = total
        if self.capture_start >= self._next:  # a point of the series (plain stores)
            i = self._n % self.capacity
            self._frames[i] = self.capture_start
            self._totals[i] = total
            self._n += 1
            self._next += self.every * (1 + (self.capture_start - self._next) // self.every)

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(capture frames, totals in ms) of the recorded points, oldest first."""
        n = min(self._n, self.capacity)
        order = (np.arange(n) + self._n - n) % self.capacity
        return self._frames[order], 1000.0 * self._totals[order] / self.model_rate

    def ms(self, samples: float | None) -> float | None:
        return None if samples is None else 1000.0 * samples / self.model_rate

    def report(self) -> dict:
        frames, totals = self.series()
        return {
            # the total over time: capture frame (device frames since capture started) of
            # the input heard that late; the adaptive playout buffer moves it
            "over_time": {"capture_frames": frames.tolist(),
                          "total_ms": [round(float(t), 3) for t in totals],
                          "every_frames": self.every},
            "stated_total_ms": self.ms(self.first_samples),
            "stated_total_samples": self.first_samples,
            "stated_total_at_end_ms": self.ms(self.last_samples),
            "delay_ms": self.ms(self.delay),
            "jitter_buffer_ms": self.ms(self.jitter_samples),
            "start_offset_ms": (None if self.first_samples is None else
                                self.ms(self.first_samples - self.delay - self.jitter_samples)),
            "output_held_at_start_ms": 1000.0 * self.resampler_out_held / self.device_rate,
            "model_rate": self.model_rate,
            "device_rate": self.device_rate,
        }

    def describe(self) -> str:
        r = self.report()
        return (f"stated input-to-output latency {r['stated_total_ms']:.1f} ms = D "
                f"{r['delay_ms']:.1f} + jitter buffer {r['jitter_buffer_ms']:.1f} + capture "
                f"block, network, compute and resampling at start {r['start_offset_ms']:.1f} ms")
