"""`stemlink send`: stream a file to the server in blocks, collect the stems, write them
with the input's length and alignment, and measure every block on the client's clock."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.percentiles import summarize
from stemlink.udp_client.core import (
    ClientCore,
    ClientError,
    Pong,
    ServerBye,
    SessionError,
    StemBlock,
)
from stemlink.udp_client.transport import connect
from stemlink.wire import packets as pk
from stemlink.wire.constants import PRESET_NAMES, Flags, SampleFormat

AFAP_WINDOW = 32  # blocks in flight when not pacing in real time


@dataclass
class SendOptions:
    input: str | Path
    server: tuple[str, int]
    out_dir: str | Path | None
    preset: str | None = None
    realtime: bool = True
    block: int = 256
    fmt: SampleFormat = SampleFormat.S16LE
    psk: bytes = b""
    jitter_ms: float = 60.0  # playout budget: stems arriving later count as late
    hop_frames: int | None = None
    lookahead: int | None = None
    synthesis: str | None = None
    synthesis_hop: int | None = None  # m, samples (None: the server's choice)
    mask_hold: int | None = None  # k, synthesis hops per inference (None: the server's)
    ping_every_s: float = 0.5
    drain_s: float = 2.0  # how long to wait for the last stems
    stall_s: float = 15.0  # not paced: give up when no stem at all came back for this long
    first_seq: int = 0
    # What the server is told: ARCHIVAL = every block is wanted however late (files);
    # a number of ms = blocks later than that are of no use (as a live listener).
    playout_ms: int = pk.ARCHIVAL


@dataclass
class SendReport:
    files: dict[str, str]
    model: str
    stems: list[str]
    preset: str
    delay: int
    sample_rate: int
    block: int
    seconds: float
    sent: int
    received: int
    expected: int
    lost: int
    late: int
    duplicates: int
    concealed: int
    bytes_sent: int  # datagrams' bytes (IP/UDP headers not included)
    bytes_received: int
    rtt_ms: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    turnaround_ms: dict = field(default_factory=dict)
    block_latency_ms: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    synthesis_hop: int = 0  # m the server chose, samples
    mask_hold: int = 1  # k the server chose
    hop_frames: int = 1  # H the server chose

    @property
    def period(self) -> int:
        """Samples between the server's inferences: H * k * m."""
        return self.hop_frames * self.mask_hold * self.synthesis_hop

    def summary(self) -> str:
        lat, rtt = self.latency_ms, self.rtt_ms
        return "\n".join([
            f"model {self.model}, preset {self.preset}, D = {self.delay} samples "
            f"({1000 * self.delay / self.sample_rate:.1f} ms; synthesis hop "
            f"{self.synthesis_hop}, mask hold {self.mask_hold}, H {self.hop_frames}: one "
            f"inference every {1000 * self.period / self.sample_rate:.1f} ms), "
            f"block {self.block}",
            f"packets: sent {self.sent}, received {self.received}/{self.expected}, "
            f"lost {self.lost}, late {self.late}, duplicates {self.duplicates}, "
            f"concealed {self.concealed}",
            f"RTT ms: p50 {rtt.get('p50', float('nan')):.2f}, "
            f"p99 {rtt.get('p99', float('nan')):.2f}",
            f"end-to-end latency ms: p50 {lat.get('p50', float('nan')):.1f}, "
            f"p95 {lat.get('p95', float('nan')):.1f}, p99 {lat.get('p99', float('nan')):.1f} "
            f"(D alone {1000 * self.delay / self.sample_rate:.1f})",
        ])


async def send_file(opts: SendOptions) -> SendReport:
    x, file_sr = aio.read_audio(opts.input)
    aio.sanitize(x)
    file_ch, n_file = x.shape
    core = ClientCore(sample_rate=file_sr, channels=min(file_ch, 2), block=opts.block,
                      fmt=opts.fmt, preset=opts.preset, hop_frames=opts.hop_frames,
                      lookahead=opts.lookahead, synthesis=opts.synthesis, psk=opts.psk,
                      synthesis_hop=opts.synthesis_hop, mask_hold=opts.mask_hold,
                      first_seq=opts.first_seq, playout_ms=opts.playout_ms)
    state = _Receiver()
    proto, acc_ev = await connect(core, opts.server, state.on_event)
    acc = acc_ev.accept
    try:
        xm = aio.resample(aio.to_channels(x, acc.channels), file_sr, acc.sample_rate)
        n, d, b = xm.shape[1], acc.delay, acc.block_frames
        nblocks = -(-(n + d) // b)
        padded = np.zeros((acc.channels, nblocks * b), np.float32)
        padded[:, :n] = xm
        state.setup(len(acc.stems), acc.channels, nblocks, b)
        await _pump(proto, core, state, padded, nblocks, b, acc.sample_rate, opts)
        proto.send(core.bye(time.monotonic()))
    finally:
        proto.transport.close()
    stems = state.stems[:, :, d:d + n]
    stems = np.stack([aio.resample(s, acc.sample_rate, file_sr, length=n_file) for s in stems])
    stems = aio.from_channels(stems, file_ch)
    files = {}
    if opts.out_dir is not None:
        for name, s in zip(acc.stems, stems, strict=True):
            path = Path(opts.out_dir) / f"{name}.wav"
            aio.write_audio(path, s, file_sr)
            files[name] = str(path)
    return state.report(acc, files, n, d, b, core, opts)


async def _pump(proto, core: ClientCore, state: _Receiver, padded: np.ndarray, nblocks: int,
                b: int, sr: int, opts: SendOptions) -> None:
    # Real-time pacing acts like a capture device: block k is complete, and sent, at
    # t0 + (k+1)*b/sr. Latency is measured from that capture moment (not from when the
    # send actually happened), so client scheduling delays count against us.
    t0_ns = time.monotonic_ns()
    t0 = t0_ns / 1e9
    next_ping = t0
    for k in range(nblocks):
        state.check_ended()
        if opts.realtime:
            due = t0 + (k + 1) * b / sr
            while (delay := due - time.monotonic()) > 0:  # timers may fire early (1 ms grain)
                await asyncio.sleep(delay)
            state.send_ns[k] = t0_ns + (k + 1) * b * 1e9 / sr
        else:
            # flow control on the newest block heard back (a lost stem must not stall it)
            since = time.monotonic()
            while k - state.newest_block() > AFAP_WINDOW:
                await asyncio.sleep(0.0005)
                state.check_ended()
                now = time.monotonic()
                if now - max(state.last_rx, since) > opts.stall_s:
                    raise ClientError(f"the server sent no stems for {opts.stall_s:g} s "
                                      "(is it overloaded, or the network down?)")
                if now >= next_ping:  # keep the session alive while the server catches up
                    next_ping = now + opts.ping_every_s
                    ping = core.ping(now)
                    proto.send(ping)
                    state.bytes_sent += len(ping)
            state.send_ns[k] = time.monotonic_ns()
        now = time.monotonic()
        if now >= next_ping:
            ping = core.ping(now)
            proto.send(ping)
            state.bytes_sent += len(ping)
            next_ping = now + opts.ping_every_s
        flags = Flags.LAST if k == nblocks - 1 else 0
        audio = core.audio(padded[:, k * b:(k + 1) * b], k * b, time.monotonic_ns(), flags)
        proto.send(audio)
        state.bytes_sent += len(audio)
        state.sent += 1
    deadline = time.monotonic() + opts.drain_s
    while state.received < state.expected and time.monotonic() < deadline:
        state.check_ended()
        await asyncio.sleep(0.005)
    state.seconds = time.monotonic() - t0


class _Receiver:
    """Places STEM blocks by timestamp into preallocated full-length buffers."""

    def __init__(self) -> None:
        self.rtt_ns: list[int] = []
        self.sent = self.received = self.expected = 0
        self.duplicates = self.concealed = self.bad = 0
        self.bytes_sent = self.bytes_received = 0
        self.last_rx = 0.0
        self.seconds = 0.0
        self.ended: SessionError | ServerBye | None = None
        self._newest = -1

    def setup(self, n_stems: int, channels: int, nblocks: int, b: int) -> None:
        self.b, self.nblocks = b, nblocks
        self.stems = np.zeros((n_stems, channels, nblocks * b), np.float32)
        self.arrival_ns = np.full((n_stems, nblocks), np.nan)
        self.send_ns = np.full(nblocks, np.nan)
        self.expected = n_stems * nblocks
        self._per_block = np.zeros(nblocks, np.int32)
        self._n_stems = n_stems
        self._complete = 0

    def complete_upto(self) -> int:
        while self._complete < self.nblocks and self._per_block[self._complete] >= self._n_stems:
            self._complete += 1
        return self._complete

    def newest_block(self) -> int:
        return self._newest

    def check_ended(self) -> None:
        """Raise if the server ended the session (ERROR, or BYE on timeout/shutdown)."""
        if isinstance(self.ended, SessionError):
            raise ClientError(f"the server ended the session: {self.ended.message}")
        if isinstance(self.ended, ServerBye):
            why = {1: "idle timeout", 2: "server shutting down"}.get(self.ended.reason,
                                                                     "normal")
            raise ClientError(f"the server ended the session ({why})")

    def on_event(self, ev) -> None:
        if isinstance(ev, StemBlock):
            self.bytes_received += len(ev.data)
            h = ev.header
            k = h.timestamp // self.b if h.timestamp % self.b == 0 else -1
            if not (0 <= k < self.nblocks and h.frames == self.b and h.stem < self._n_stems):
                self.bad += 1
                return
            if not np.isnan(self.arrival_ns[h.stem, k]):
                self.duplicates += 1
                return
            pk.read_media(ev.data, h, self.stems[h.stem, :, h.timestamp:h.timestamp + self.b])
            self.arrival_ns[h.stem, k] = time.monotonic_ns()
            self._per_block[k] += 1
            self._newest = max(self._newest, k)
            self.received += 1
            self.last_rx = time.monotonic()
            if h.flags & Flags.CONCEALED:
                self.concealed += 1
        elif isinstance(ev, Pong):
            self.rtt_ns.append(ev.rtt_ns)
        elif isinstance(ev, (SessionError, ServerBye)):
            self.ended = ev

    def report(self, acc, files, n, d, b, core, opts) -> SendReport:
        arrival = self.arrival_ns
        turnaround = (arrival - self.send_ns[None, :]) / 1e6  # per stem block, ms
        # lateness and latency mean something only when blocks leave at the audio rate
        late = int(np.sum(turnaround > opts.jitter_ms)) if opts.realtime else 0
        # end-to-end per input block: its output samples [kb + D, kb + D + b) complete
        lat = []
        for k in range(-(-n // b)):
            k1, k2 = (k * b + d) // b, (k * b + d + b - 1) // b
            done = arrival[:, k1:k2 + 1]
            lat.append(float(np.max(done) - self.send_ns[k]) / 1e6
                       if not np.isnan(done).any() else float("nan"))
        dropped = {k: v for k, v in core.counters.items() if k.startswith("drop")}
        if self.bad:
            dropped["drop_bad-stem-block"] = self.bad
        return SendReport(
            files=files, model=acc.model, stems=list(acc.stems),
            preset=PRESET_NAMES.get(acc.preset, "custom"), delay=d,
            sample_rate=acc.sample_rate, block=b,
            seconds=self.seconds, sent=self.sent, received=self.received,
            expected=self.expected, lost=self.expected - self.received, late=late,
            duplicates=self.duplicates, concealed=self.concealed,
            bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
            rtt_ms=summarize([r / 1e6 for r in self.rtt_ns]), latency_ms=summarize(lat),
            turnaround_ms=summarize(turnaround.ravel()), block_latency_ms=lat,
            dropped=dropped, synthesis_hop=acc.synthesis_hop, mask_hold=acc.mask_hold,
            hop_frames=acc.hop_frames,
        )


def save_stats(rep: SendReport, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rep.__dict__, indent=2) + "\n")
