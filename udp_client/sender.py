"""`stemlink send`: stream a file to the server in blocks, collect the stems, write them
with the input's length and alignment, and measure every block on the client's clock."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.conceal import DEFAULT_METHOD, Concealer
from stemlink.percentiles import summarize
from stemlink.udp_client.core import (
    ClientCore,
    ClientError,
    Pong,
    ServerBye,
    SessionError,
    StemBlock,
)
from stemlink.udp_client.jitter import JitterBuffer, JitterConfig
from stemlink.udp_client.mixrepair import MixtureRepair, band_repair, band_trust, frame_len
from stemlink.udp_client.status import SendProgress, SendStatus, ticker
from stemlink.udp_client.transport import connect
from stemlink.wire import packets as pk
from stemlink.wire.constants import PRESET_NAMES, Features, Flags, SampleFormat

AFAP_WINDOW = 32  # blocks in flight when not pacing in real time
MISSES_LISTED = 32  # late and lost blocks whose media time a report lists
LOSS_WARN_FRACTION = 0.05  # more stem blocks lost than this: the summary warns


@dataclass
class SendOptions:
    input: str | Path
    server: tuple[str, int]
    out_dir: str | Path | None
    preset: str | None = None
    realtime: bool = True
    block: int = 256
    fmt: SampleFormat = SampleFormat.S16LE
    psk: bytes = b""  # a passphrase
    key: bytes = b""  # 32 bytes from a key file
    encrypt: bool = False  # ask for ChaCha20-Poly1305 (refuse the session without it)
    jitter_ms: float = 60.0  # playout budget: stems arriving later count as late
    hop_frames: int | None = None
    lookahead: int | None = None
    synthesis: str | None = None
    synthesis_hop: int | None = None  # m, samples (None: the server's choice)
    mask_hold: int | None = None  # k, synthesis hops per inference (None: the server's)
    ping_every_s: float = 0.5
    drain_s: float = 2.0  # how long to wait for the last stems
    # paced: give up when nothing at all came from the server for this long (the server's
    # default idle timeout: past it the session is gone, the server stopped or unreachable)
    silent_s: float = 10.0
    stall_s: float = 15.0  # not paced: give up when no stem at all came back for this long
    first_seq: int = 0
    redundancy: bool = False  # ask for XOR parity both ways (wire.redundancy)
    conceal: str | None = DEFAULT_METHOD  # how missing stem blocks are filled (None: silence)
    as_heard: bool = False  # write what a live listener would have heard
    mix_repair: bool = True  # repair stems from the mixture sent (udp_client.mixrepair)
    keep_raw: bool = False  # keep what arrived, for replay() with other policies (benches)
    jitter: float | None = None  # as-heard playout policy: None = adaptive, else fixed ms
    # What the server is told: ARCHIVAL = every block is wanted however late (files);
    # a number of ms = blocks later than that are of no use (as a live listener).
    playout_ms: int = pk.ARCHIVAL
    on_status: Callable[[SendProgress], None] | None = None  # called once a second


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
    mode: str = "archival"  # or "as-heard"
    conceal: str = DEFAULT_METHOD
    redundancy: bool = False
    recovered: int = 0  # stem blocks repaired from redundancy
    missing: int = 0  # stem blocks written from concealment (archival: never arrived)
    playout: dict = field(default_factory=dict)  # as-heard: the jitter buffer's stats
    repair: dict = field(default_factory=dict)  # mixture repair: enabled, residual, count
    raw: tuple | None = None  # keep_raw: (receiver, stems as arrived, mixture, n)
    cpu_percent: float = 0.0  # client process CPU over the run, % of one core
    cpu_ms_per_block: float = 0.0  # client CPU per block sent (all its stems included)
    synthesis_hop: int = 0  # m the server chose, samples
    mask_hold: int = 1  # k the server chose
    hop_frames: int = 1  # H the server chose
    parity_sent: int = 0  # redundancy: parity datagrams sent up
    jitter_ms: float = 60.0  # the budget `late` counts against
    # where the misses fell: media seconds of the first MISSES_LISTED late (turnaround over
    # the playout budget) and lost stem blocks (benchmarks diagnose from these)
    late_at_s: list = field(default_factory=list)
    lost_at_s: list = field(default_factory=list)

    @property
    def period(self) -> int:
        """Samples between the server's inferences: H * k * m."""
        return self.hop_frames * self.mask_hold * self.synthesis_hop

    def summary(self, client_cpu: bool = True) -> str:
        """client_cpu=False: the process also ran the server (`demo`), its CPU figure says
        nothing about the client."""
        lat, rtt = self.latency_ms, self.rtt_ms
        return "\n".join([
            f"model {self.model}, preset {self.preset}, D = {self.delay} samples "
            f"({1000 * self.delay / self.sample_rate:.1f} ms; synthesis hop "
            f"{self.synthesis_hop}, mask hold {self.mask_hold}, H {self.hop_frames}: one "
            f"inference every {1000 * self.period / self.sample_rate:.1f} ms), "
            f"block {self.block}",
            f"packets: sent {self.sent} blocks"
            + (f" (+{self.parity_sent} parity)" if self.parity_sent else "")
            + f", stem blocks received {self.received}/{self.expected}, lost {self.lost}, "
            f"late {self.late} (past --jitter-ms {self.jitter_ms:g}), duplicates "
            f"{self.duplicates}; {self.concealed} received blocks depend on input the "
            f"server had to conceal",
            (f"RTT ms: p50 {rtt['p50']:.2f}, p99 {rtt['p99']:.2f}" if rtt.get("n")
             else "RTT: not measured (no PONG came back)"),
            (f"end-to-end latency ms: p50 {lat['p50']:.1f}, p95 {lat['p95']:.1f}, "
             f"p99 {lat['p99']:.1f} (D alone {1000 * self.delay / self.sample_rate:.1f})"
             if lat.get("n") else "end-to-end latency: not measured (no block came back "
             "whole)"),
            f"{self.mode}: concealment {self.conceal}, {self.missing} stem blocks concealed; "
            f"redundancy {'on' if self.redundancy else 'off'}, {self.recovered} repaired; "
            + (f"client CPU {self.cpu_percent:.1f} % of a core "
             f"({self.cpu_ms_per_block:.3f} ms per block)" if client_cpu else
             "client CPU not measured (the server runs in this process)"),
        ] + ([self._as_heard_line()] if self.playout else []) + self._warnings())

    def _as_heard_line(self) -> str:
        p = self.playout
        adaptive = p["mode"] == "adaptive"
        return (f"as heard ({p['mode']} playout buffer, --jitter): mean delay "
                f"{p['mean_delay_ms']:.1f} ms behind the fastest arrival"
                + (f" (target at most {p['target_max_ms']:.1f} ms)" if adaptive else "")
                + f", {p['late']} blocks later than the buffer concealed"
                + (f", {p['inserted']} inserted while growing" if adaptive else "")
                + f"; stated end-to-end latency {p['stated_latency_ms']:.1f} ms")

    def _warnings(self) -> list[str]:
        """A line a user cannot miss when much of what was written is guessed."""
        if not self.expected or self.lost <= LOSS_WARN_FRACTION * self.expected:
            return []
        return [f"warning: {100 * self.lost / self.expected:.0f} % of the stem blocks never "
                f"arrived and were concealed: the server or the network did not keep up "
                f"(see the server's log; `stemlink bench capacity` measures what it sustains)"]


async def send_file(opts: SendOptions) -> SendReport:
    x, file_sr = aio.read_audio(opts.input)
    aio.sanitize(x)
    file_ch, n_file = x.shape
    # what the server is told: archival wants every block; as heard, the playout budget
    playout_ms = (opts.playout_ms if not opts.as_heard else
                  0 if opts.jitter is None else min(int(opts.jitter), pk.ARCHIVAL - 1))
    core = ClientCore(sample_rate=file_sr, channels=min(file_ch, 2), block=opts.block,
                      fmt=opts.fmt, preset=opts.preset, hop_frames=opts.hop_frames,
                      lookahead=opts.lookahead, synthesis=opts.synthesis, psk=opts.psk,
                      key=opts.key, encrypt=opts.encrypt, first_seq=opts.first_seq,
                      playout_ms=playout_ms, synthesis_hop=opts.synthesis_hop,
                      mask_hold=opts.mask_hold,
                      features=int(Features.REDUNDANCY) if opts.redundancy else 0)
    cpu0 = time.process_time()
    state = _Receiver()
    proto, acc_ev = await connect(core, opts.server, state.on_event)
    acc = acc_ev.accept
    try:
        xm = aio.resample(aio.to_channels(x, acc.channels), file_sr, acc.sample_rate)
        n, d, b = xm.shape[1], acc.delay, acc.block_frames
        nblocks = -(-(n + d) // b)
        padded = np.zeros((acc.channels, nblocks * b), np.float32)
        padded[:, :n] = xm
        state.setup(len(acc.stems), acc.channels, nblocks, b, acc.sample_rate)
        status = tick = None
        t_status = time.monotonic()
        if opts.on_status is not None:
            status = SendStatus(sample_rate=acc.sample_rate, block=b, delay=d, frames=n,
                                jitter_ms=opts.jitter_ms, realtime=opts.realtime)
            tick = asyncio.create_task(ticker(status, state, opts.on_status, t_status))
        try:
            await _pump(proto, core, state, padded, nblocks, b, acc.sample_rate, opts)
        finally:
            if tick is not None:
                tick.cancel()
                await asyncio.gather(tick, return_exceptions=True)
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Ctrl-C (asyncio cancels the task) or SIGINT: tell the server now rather than
        # leaving the session to its idle timeout
        if not state.ended:
            proto.send(core.bye(time.monotonic()))
        raise
    else:
        proto.send(core.bye(time.monotonic()))
    finally:
        proto.transport.close()
    if status is not None:  # the final state: the socket is closed, nothing more arrives
        opts.on_status(status.measure(state, time.monotonic_ns(),
                                      time.monotonic() - t_status))
    cpu_s = time.process_time() - cpu0  # the streaming itself (file I/O outside)
    state.delay = d
    # the input on the stems' timeline (read-only below): the replays' and the repair's
    mixture = (output_mixture(padded, d, state.stems.shape[2])
               if opts.keep_raw or opts.mix_repair else None)
    raw = (copy.copy(state), state.stems.copy(), mixture, n) if opts.keep_raw else None
    mix = mixture if opts.mix_repair else None
    playout = (_as_heard(state, acc, opts, mix) if opts.as_heard else
               _conceal_missing(state, opts, mix))
    stems = state.stems[:, :, d:d + n]
    stems = np.stack([aio.resample(s, acc.sample_rate, file_sr, length=n_file) for s in stems])
    stems = aio.from_channels(stems, file_ch)
    files = {}
    if opts.out_dir is not None:
        for name, s in zip(acc.stems, stems, strict=True):
            path = Path(opts.out_dir) / f"{name}.wav"
            aio.write_audio(path, s, file_sr)
            files[name] = str(path)
    rep = state.report(acc, files, n, d, b, core, opts)
    rep.mode = "as-heard" if opts.as_heard else "archival"
    rep.conceal, rep.redundancy = opts.conceal, core.redundancy
    rep.recovered = core.counters["recovered"]
    rep.parity_sent = core.parities_sent
    rep.jitter_ms = opts.jitter_ms
    rep.missing = state.missing
    rep.repair = {k: playout.pop(k) for k in list(playout) if k.startswith("mix_")}
    rep.playout = playout
    rep.raw = raw
    rep.cpu_percent = 100 * cpu_s / max(state.seconds, 1e-9)
    rep.cpu_ms_per_block = 1000 * cpu_s / max(state.sent, 1)
    if playout:
        playout["stated_latency_ms"] = (1000 * d / acc.sample_rate + acc.reorder_ms
                                        + rep.rtt_ms.get("p50", 0.0) / 2
                                        + playout["mean_delay_ms"])
    return rep


def output_mixture(padded: np.ndarray, delay: int, total: int) -> np.ndarray:
    """The input as the stems' timeline sees it: output sample i <- input sample i - D."""
    mix = np.zeros((padded.shape[0], total), np.float32)
    mix[:, delay:] = padded[:, :total - delay]
    return mix


def _conceal_missing(state: _Receiver, opts: SendOptions, mix: np.ndarray | None) -> dict:
    """Archival: every block that arrived is written; the others are concealed, each
    interpolated into the next block when that one arrived; then, where the stems are
    known to add up to the mixture, repaired from it per frequency band
    (udp_client.mixrepair.band_repair)."""
    have = ~np.isnan(state.arrival_ns)
    n_stems, nblocks = have.shape
    b = state.b
    for s in range(n_stems if opts.conceal is not None else 0):
        conc = Concealer(state.stems.shape[1], b, opts.conceal, state.sample_rate)
        for k in range(nblocks):
            blk = state.stems[s, :, k * b:(k + 1) * b]
            if have[s, k]:
                conc.good(blk, blk)
            else:
                nxt = k + 1 < nblocks and have[s, k + 1]
                conc.missing(blk, after=state.stems[s, :, (k + 1) * b:(k + 2) * b]
                             if nxt else None)
                state.missing += 1
    if mix is None:
        return {}
    mr = MixtureRepair(n_stems, state.stems.shape[1], b)
    # output blocks the server flagged CONCEALED depend on input it had to conceal
    flagged = np.zeros(nblocks, bool)
    for ts in state.concealed_in:
        if ts // b < nblocks:
            flagged[ts // b] = True
    for k in range(nblocks):  # the median is robust to the flagged blocks that are off
        if have[:, k].all():
            mr.observe(state.stems[:, :, k * b:(k + 1) * b], mix[:, k * b:(k + 1) * b])
            if mr.observed >= 64:
                break
    if not mr.enabled:
        return {"mix_repair": False, "mix_residual_db": 10 * np.log10(max(mr.ratio, 1e-12)),
                "mix_repaired": 0}
    stems = state.stems
    own = np.zeros_like(stems)  # the mixture's remainder, per lost stem block
    shared = np.zeros(stems.shape[2], bool)  # samples whose residual all stems share
    for k in range(nblocks):
        sl = slice(k * b, (k + 1) * b)
        if have[:, k].all():
            # stems that do not add up where they depend on concealed input
            if flagged[k] and mr.off(stems[:, :, sl], mix[:, sl]):
                shared[sl] = True
                mr.repaired += 1
        elif have[:, k].any() and not flagged[k]:
            # lost on the way down: the mixture's remainder is the lost stems' own
            mr.repair(stems[:, :, sl], have[:, k], mix[:, sl], into=own[:, :, sl])
        else:
            # all lost; or the siblings that arrived depend on concealed input too (the
            # server flagged them), and splitting by band measures better than trusting them
            shared[sl] = True
            mr.repaired += 1
    ok = np.repeat(have.all(axis=0) & ~flagged, b)[:stems.shape[2]]
    nfft = frame_len(state.sample_rate)
    band_repair(stems, mix, own, shared, band_trust(stems, mix, ok, nfft), nfft)
    return {"mix_repair": mr.enabled, "mix_residual_db": 10 * np.log10(max(mr.ratio, 1e-12)),
            "mix_repaired": mr.repaired}


class ArrayMixture:
    """The whole input on the stems' timeline, for the playout buffer's mixture repair."""

    def __init__(self, mix: np.ndarray) -> None:
        self.mix = mix

    def segment(self, ts: int, n: int) -> np.ndarray | None:
        return self.mix[:, ts:ts + n] if 0 <= ts and ts + n <= self.mix.shape[1] else None


def _as_heard(state: _Receiver, acc, opts: SendOptions, mix: np.ndarray | None) -> dict:
    """Replay the arrivals through the live playout buffer, popped on the audio clock the
    blocks were paced by: what a listener would have heard, block by block (a block
    later than the buffer is concealed). Written by media position, so the file stays
    aligned with the input; time the buffer inserted or cut is reported, not written."""
    n_stems, channels, total = state.stems.shape
    b, sr = state.b, state.sample_rate
    cfg = JitterConfig() if opts.jitter is None else JitterConfig(fixed_ms=opts.jitter)
    tap = np.zeros_like(state.stems)
    jb = JitterBuffer(n_stems, channels, b, sr, cfg, conceal=opts.conceal, tap=tap,
                      capacity=max(64, int(2 * cfg.max_ms / 1000 * sr / b) + 4),
                      mixture=None if mix is None else ArrayMixture(mix), delay=state.delay)
    arrivals = [(state.arrival_ns[s, k], s, k) for s in range(n_stems)
                for k in range(state.nblocks) if not np.isnan(state.arrival_ns[s, k])]
    arrivals.sort()
    t0 = state.t0_ns
    buf = np.zeros((n_stems, channels, b), np.float32)
    i, j = 0, 0
    while jb.play is None or jb.play < total:
        now_ns = t0 + (j + 1) * b * 1e9 / sr  # the audio clock: one block per period
        while i < len(arrivals) and arrivals[i][0] <= now_ns:
            at, s, k = arrivals[i]
            jb.push(s, k * b, state.stems[s, :, k * b:(k + 1) * b], at / 1e9,
                    Flags.CONCEALED if k * b in state.concealed_in else 0)
            i += 1
        jb.pop(buf, now_ns / 1e9)
        j += 1
        if i >= len(arrivals) and jb.play is None:
            break
    st = jb.stats
    state.missing = st.concealed
    state.stems[...] = tap
    return {"mode": "adaptive" if cfg.adaptive else f"fixed {cfg.fixed_ms} ms",
            "mean_delay_ms": st.mean_delay_ms, "target_max_ms": st.target_max_ms,
            "concealed": st.concealed, "late": st.late, "inserted": st.inserted,
            "cut_samples": st.cut_samples, "underruns": st.underruns,
            **({} if jb.repair is None else {
                "mix_repair": jb.repair.enabled, "mix_repaired": jb.repair.repaired,
                "mix_residual_db": 10 * np.log10(max(jb.repair.ratio, 1e-12))})}


async def _pump(proto, core: ClientCore, state: _Receiver, padded: np.ndarray, nblocks: int,
                b: int, sr: int, opts: SendOptions) -> None:
    # Real-time pacing acts like a capture device: block k is complete, and sent, at
    # t0 + (k+1)*b/sr. Latency is measured from that capture moment (not from when the
    # send actually happened), so client scheduling delays count against us.
    t0_ns = time.monotonic_ns()
    t0 = t0_ns / 1e9
    state.t0_ns = t0_ns
    next_ping = t0
    for k in range(nblocks):
        state.check_ended()
        if opts.realtime:
            state.check_silent(opts.silent_s)
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
        for dgram in core.audio_datagrams(padded[:, k * b:(k + 1) * b], k * b,
                                          time.monotonic_ns(), flags):
            proto.send(dgram)
            state.bytes_sent += len(dgram)
        state.sent += 1
    deadline = time.monotonic() + opts.drain_s
    while state.received < state.expected and time.monotonic() < deadline:
        state.check_ended()
        if opts.realtime:
            state.check_silent(opts.silent_s)
        await asyncio.sleep(0.005)
    state.seconds = time.monotonic() - t0


class _Receiver:
    """Places STEM blocks by timestamp into preallocated full-length buffers."""

    def __init__(self) -> None:
        self.rtt_ns: list[int] = []
        self.sent = self.received = self.expected = 0
        self.duplicates = self.concealed = self.bad = 0
        self.bytes_sent = self.bytes_received = 0
        self.last_rx = 0.0  # the last stem block
        self.last_heard = 0.0  # the last packet of any kind from the server
        self.seconds = 0.0
        self.missing = 0
        self.concealed_in: set[int] = set()
        self.delay = 0
        self.t0_ns = 0
        self.sample_rate = 0
        self.ended: SessionError | ServerBye | None = None
        self._newest = -1

    def setup(self, n_stems: int, channels: int, nblocks: int, b: int, sr: int) -> None:
        self.b, self.nblocks, self.sample_rate = b, nblocks, sr
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

    def check_silent(self, limit_s: float) -> None:
        """Raise if nothing came from the server for `limit_s` (stems or PONGs)."""
        now = time.monotonic()
        heard = max(self.last_heard, self.t0_ns / 1e9)
        if now - heard > limit_s:
            at = max(0.0, self.last_heard - self.t0_ns / 1e9) if self.last_heard else 0.0
            raise ClientError(f"the server stopped answering: nothing from it for "
                              f"{limit_s:g} s, since {at:.1f} s into the stream (it stopped, "
                              "or the network is down)")

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
            self.last_rx = self.last_heard = time.monotonic()
            if h.flags & Flags.CONCEALED:
                self.concealed += 1
                self.concealed_in.add(h.timestamp)  # depends on input the server concealed
        elif isinstance(ev, Pong):
            self.rtt_ns.append(ev.rtt_ns)
            self.last_heard = time.monotonic()
        elif isinstance(ev, (SessionError, ServerBye)):
            self.ended = ev

    def report(self, acc, files, n, d, b, core, opts) -> SendReport:
        arrival = self.arrival_ns
        turnaround = (arrival - self.send_ns[None, :]) / 1e6  # per stem block, ms
        # lateness and latency mean something only when blocks leave at the audio rate
        late_mask = (turnaround > opts.jitter_ms) if opts.realtime else np.zeros(
            turnaround.shape, bool)
        late = int(np.sum(late_mask))
        rate = acc.sample_rate

        def media_s(mask: np.ndarray) -> list[float]:  # (stem, block) -> block start, s
            ks = np.nonzero(mask.any(axis=0))[0][:MISSES_LISTED]
            return [round(float(k) * b / rate, 4) for k in ks]
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
            late_at_s=media_s(late_mask), lost_at_s=media_s(np.isnan(arrival)),
        )


def save_stats(rep: SendReport, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    d = {k: v for k, v in rep.__dict__.items() if k != "raw"}
    Path(path).write_text(json.dumps(d, indent=2) + "\n")


def replay(rep: SendReport, conceal: str, as_heard: bool, jitter: float | None = None,
           mix_repair: bool = True) -> tuple[np.ndarray, dict]:
    """The stems [S, C, n] (model rate, aligned with the input) that this run would have
    written under another concealment/playout policy: same arrivals, same clock."""
    if rep.raw is None:
        raise ValueError("the run was not made with keep_raw")
    st0, stems, mix, n = rep.raw
    state = copy.copy(st0)
    state.stems = stems.copy()
    state.missing = 0
    opts = SendOptions("", ("", 0), None, conceal=conceal, as_heard=as_heard, jitter=jitter,
                       mix_repair=mix_repair)
    m = mix if mix_repair else None
    info = _as_heard(state, None, opts, m) if as_heard else _conceal_missing(state, opts, m)
    info["concealed"] = state.missing
    return state.stems[:, :, state.delay:state.delay + n], info
