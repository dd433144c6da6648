"""`stemlink live`: sound card in -> server -> playout buffer -> sound card out, headless.

Threads and what they own:
- the PortAudio capture callback: copies its frames into a FrameRing and records
  (device position, frames) in a MetaRing; nothing else (no lock, no allocation);
- the event loop: drains that ring every POLL_S, converts channels and rate
  (udp_client.resample: smooth output, stated delay), cuts blocks, timestamps them by
  device position (so frames the ring had to drop leave a gap in the timestamps, and the
  server conceals them, rather than compressing time), sends AUDIO (and parity), and hands
  every STEM block it receives to the playout thread through a BlockRing;
- the playout thread: owns the JitterBuffer (one clock for all stems, fixed or adaptive),
  mixes the monitored stems, resamples to the device rate and keeps the output FrameRing
  topped up to OUT_LEVEL device periods;
- the PortAudio playback callback: copies from the output ring; zeros and counts an
  underrun when it runs dry.

Stated end-to-end latency (printed at start and whenever it moves by more than
LATENCY_STEP_MS): D + the server's input reorder window + one-way network (RTT/2) + the
playout buffer's delay + the output ring + the capture poll. That is an estimate from the
parts; once playout starts, live also states the input-to-output latency on the sound
card's own frame clock (latency.LatencyAccount): the capture callback counts the frames it
delivered, the playback callback where the media position it is about to play sits (the
playout thread publishes, with every block it writes, the device frame at which the next
media position starts: output ring + resampler delay ahead).

SIGINT and SIGTERM stop it like `--seconds` does: streams closed, BYE sent, stats returned.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.conceal import DEFAULT_METHOD
from stemlink.udp_client.core import ClientCore, ClientError, Pong, StemBlock
from stemlink.udp_client.jitter import JitterBuffer, JitterConfig
from stemlink.udp_client.latency import LatencyAccount
from stemlink.udp_client.mix import default_mix, parse_mix
from stemlink.udp_client.resample import StreamResampler
from stemlink.udp_client.rings import BlockRing, FrameRing, MetaRing
from stemlink.udp_client.transport import connect
from stemlink.wire import packets as pk
from stemlink.wire.constants import PRESET_NAMES, Features

POLL_S = 0.002  # the event loop drains the capture ring this often
SERVICE_S = 0.001  # the playout thread's period
OUT_LEVEL = 2  # output ring kept at this many device periods (or model blocks)
CAPTURE_RING_S = 0.5
LATENCY_STEP_MS = 3.0
# The audio callbacks are Python: each must take the GIL, and a thread holding it (the
# event loop resampling, the playout thread) gives it up only every switch interval (5 ms
# by default: a whole JACK period of 256 frames at 48 kHz, so callbacks miss their cycle).
# While live runs, holders are asked to yield every 0.5 ms.
GIL_SWITCH_S = 0.0005
SIGNAL_THRESHOLD = 1e-3  # -60 dBFS: the first input sample above it is reported (stats)
# PortAudio's callback status flags, counted per callback (xruns the device reports)
IN_FLAGS = ("input_overflow", "input_underflow")
OUT_FLAGS = ("output_underflow", "output_overflow")


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise ClientError(f"sound devices are unavailable ({e}); install PortAudio and "
                          "`pip install sounddevice`") from None
    return sd


class Capture:
    """The capture callback's side: frames and their device positions into SPSC rings."""

    def __init__(self, rate: int, channels: int, seconds: float = CAPTURE_RING_S) -> None:
        self.rate = rate
        self.ring = FrameRing(max(int(seconds * rate), 4096), channels)
        self.meta = MetaRing(4096, 2)  # (device position, frames) per callback
        self.pos = np.zeros(1, np.int64)  # device frames since the stream started
        self.overruns = np.zeros(1, np.int64)  # callbacks dropped: the ring was full
        self.device_overflows = np.zeros(1, np.int64)  # PortAudio said it dropped input
        self.flags = np.zeros(len(IN_FLAGS), np.int64)  # callbacks with each IN_FLAGS set
        self.account: LatencyAccount | None = None  # set by run_live

    def callback(self, indata, frames, t, status) -> None:
        pos = int(self.pos[0])
        if status:
            if status.input_overflow:
                self.device_overflows[0] += 1
                self.flags[0] += 1
            if status.input_underflow:
                self.flags[1] += 1
        if self.account is not None:
            self.account.on_capture(frames)
        if self.meta.free() and self.ring.free() >= frames:
            self.ring.write(indata)
            self.meta.put(pos, frames)
        else:
            self.overruns[0] += 1
        self.pos[0] = pos + frames


class Uplink:
    """Event-loop side of capture: device frames (with their positions) in, model-rate
    blocks with timestamps out. A gap in positions (dropped frames) becomes a gap in the
    timestamps, rounded to whole blocks, and the resampler restarts after it."""

    def __init__(self, device_rate: int, in_channels: int, model_rate: int, channels: int,
                 block: int) -> None:
        self.device_rate, self.model_rate = device_rate, model_rate
        self.in_channels, self.channels, self.block = in_channels, channels, block
        self._next_pos = 0  # device position expected next
        self._pending = np.zeros((channels, 0), np.float32)
        self.ts = 0  # timestamp of the next block to send
        self.gaps = 0
        self.gap_blocks = 0
        self.first_signal: int | None = None  # media ts of the first sample > SIGNAL_THRESHOLD
        self._rs = self._resampler()

    def _resampler(self):
        if self.device_rate == self.model_rate:
            return None
        return StreamResampler(self.device_rate, self.model_rate, self.channels)

    def feed(self, pos: int, frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """frames [n, in_channels] captured at device position pos."""
        out = []
        if pos > self._next_pos:  # frames were dropped before these
            gap = (pos - self._next_pos) * self.model_rate / self.device_rate
            lost = self._pending.shape[1] + gap
            skip = -(-int(round(lost)) // self.block)
            self.ts += skip * self.block
            self.gaps += 1
            self.gap_blocks += skip
            self._pending = np.zeros((self.channels, 0), np.float32)
            if self._rs is not None:  # a new stream of input starts after the gap
                self._rs.reset()
        self._next_pos = pos + frames.shape[0]
        x = aio.to_channels(np.ascontiguousarray(frames.T), self.channels)
        if self._rs is not None:
            x = self._rs.process(x)
        if self.first_signal is None and x.size:  # where sound first came in, media time
            loud = np.flatnonzero(np.max(np.abs(x), axis=0) > SIGNAL_THRESHOLD)
            if loud.size:
                self.first_signal = self.ts + self._pending.shape[1] + int(loud[0])
        self._pending = np.concatenate([self._pending, x], axis=1)
        b = self.block
        while self._pending.shape[1] >= b:
            out.append((self.ts, self._pending[:, :b]))
            self._pending = self._pending[:, b:]
            self.ts += b
        return out


class Playout:
    """The playout thread's side: stem blocks in (from the network thread through a
    BlockRing), the monitor mix out (to the playback callback through a FrameRing)."""

    def __init__(self, stems: list[str], gains: np.ndarray, channels: int, block: int,
                 model_rate: int, device_rate: int, out_channels: int,
                 jitter: JitterConfig | None = None, conceal: str = DEFAULT_METHOD,
                 ring_blocks: int = 512) -> None:
        self.gains = np.asarray(gains, np.float32)
        self.active = [i for i, g in enumerate(self.gains) if g != 0]
        self.block, self.channels, self.out_channels = block, channels, out_channels
        self.model_rate, self.device_rate = model_rate, device_rate
        self.jb = JitterBuffer(len(stems), channels, block, model_rate, jitter,
                               conceal=conceal, max_pop=block)
        self.inbox = BlockRing(ring_blocks, channels, block)
        cap = max(8 * block * device_rate // model_rate, 16384)
        self.out = FrameRing(cap, out_channels)
        self.underruns = np.zeros(1, np.int64)
        self.period = np.zeros(1, np.int64)  # the playback callback's frames (its own)
        self.flags = np.zeros(len(OUT_FLAGS), np.int64)  # callbacks with each OUT_FLAGS set
        self.account: LatencyAccount | None = None  # set by run_live
        # (media position, device frame at which it starts playing), published by the
        # playout thread as one tuple (a single reference store: the callback reads a
        # consistent pair without a lock); None until the playout clock is anchored
        self._anchor: tuple[int, float] | None = None
        self._blocks = np.zeros((len(stems), channels, block), np.float32)
        self._mix = np.zeros((channels, block), np.float32)
        self._tmp = np.zeros((channels, block), np.float32)
        self._rs = None
        if device_rate != model_rate:
            self._rs = StreamResampler(model_rate, device_rate, channels)

    # ---------------------------------------------------------------- network thread
    def offer(self, h: pk.Header, data: bytes, now_ns: int) -> None:
        """A STEM datagram (decoded here, into the ring's slot: no allocation)."""
        slot = self.inbox.slot()
        if slot is None or h.frames != self.block or h.channels != self.channels:
            return
        head, samples = slot
        pk.read_media(data, h, samples)
        head[0], head[1], head[2], head[3] = h.stem, h.timestamp, h.flags, now_ns
        self.inbox.commit()

    # ---------------------------------------------------------------- playout thread
    def service(self, now: float) -> None:
        jb = self.jb
        while (item := self.inbox.peek()) is not None:
            head, samples = item
            jb.push(int(head[0]), int(head[1]), samples, int(head[3]) / 1e9, int(head[2]))
            self.inbox.release()
        want = OUT_LEVEL * max(int(self.period[0]), self.block * self.device_rate
                               // self.model_rate)
        while self.out.level() < want:
            jb.pop(self._blocks, now)
            self._mix[...] = 0.0
            for i in self.active:
                np.multiply(self._blocks[i], self.gains[i], out=self._tmp)
                self._mix += self._tmp
            blk = self._mix
            if self._rs is not None:
                blk = self._rs.process(blk)
            frames = np.ascontiguousarray(aio.to_channels(blk, self.out_channels).T)
            if frames.shape[0] and not self.out.write(frames):
                break
            pos = jb.media_position()
            if pos is not None:  # the next pop's first sample starts after the ring's
                # frames and the resampler's pending output
                held = self._rs.delay() if self._rs is not None else 0.0
                self._anchor = (pos, int(self.out.written()) + held)

    # ---------------------------------------------------------------- playback callback
    def callback(self, outdata, frames, t, status) -> None:
        """The PortAudio playback callback: count the device's flags, then fill."""
        if status:
            if status.output_underflow:
                self.flags[0] += 1
            if status.output_overflow:
                self.flags[1] += 1
        self.fill(outdata)

    def fill(self, outdata: np.ndarray) -> None:
        """Copy the next frames out; zeros (and one counted underrun) when dry."""
        n = outdata.shape[0]
        if int(self.period[0]) != n:
            self.period[0] = n
        a, acct = self._anchor, self.account
        if a is not None and acct is not None:  # device frames before a[0] plays
            acct.on_playout(a[0], a[1] - int(self.out.consumed()))
        m = self.out.read(outdata)
        if m < n:
            outdata[m:] = 0.0
            self.underruns[0] += 1

    def latency_ms(self, now: float) -> float:
        """The playout buffer's delay plus what waits in the output ring."""
        return self.jb.delay_ms(now) + 1000 * self.out.level() / self.device_rate


async def run_live(server: tuple[str, int], input_device, output_device, monitor: str,
                   preset: str | None, psk: bytes, jitter: float | None, block: int,
                   seconds: float | None = None, devices=None, conceal: str = DEFAULT_METHOD,
                   redundancy: bool = False, key: bytes = b"", encrypt: bool = False,
                   synthesis_hop: int | None = None, mask_hold: int | None = None) -> dict:
    """Run until Ctrl-C or SIGTERM (or for `seconds`); each stops the streams, says BYE and
    returns the stats. jitter: None = adaptive, else a fixed playout buffer in ms.
    `devices` is the sounddevice module, or an object with the same
    query_devices/InputStream/OutputStream/PortAudioError shape."""
    sd = devices if devices is not None else _sounddevice()
    picked = {}
    for kind, dev in (("input", input_device), ("output", output_device)):
        try:
            picked[kind] = sd.query_devices(dev, kind)
        except (ValueError, sd.PortAudioError) as e:
            which = ("no default " + kind + " device" if dev is None
                     else f"{kind} device {dev!r} cannot be used ({e})")
            raise ClientError(f"{which}: pick one with --{kind}-device N|NAME (`stemlink "
                              f"devices` lists them)") from None
    dev_in, dev_out = picked["input"], picked["output"]
    rate = int(dev_in["default_samplerate"])
    in_ch = min(int(dev_in["max_input_channels"]), 2)
    out_ch = min(int(dev_out["max_output_channels"]), 2)
    if in_ch < 1 or out_ch < 1:
        raise ClientError("the chosen devices have no input or no output channels")
    core = ClientCore(sample_rate=rate, channels=in_ch, block=block, preset=preset, psk=psk,
                      features=int(Features.REDUNDANCY) if redundancy else 0,
                      playout_ms=0 if jitter is None else min(int(jitter), pk.ARCHIVAL - 1),
                      key=key, encrypt=encrypt, synthesis_hop=synthesis_hop,
                      mask_hold=mask_hold)
    stats: dict = {"rtt_ms": []}
    holder: list[Playout] = []

    def on_event(ev) -> None:
        if isinstance(ev, StemBlock) and holder:
            holder[0].offer(ev.header, ev.data, time.monotonic_ns())
        elif isinstance(ev, Pong):
            stats["rtt_ms"].append(ev.rtt_ns / 1e6)

    proto, acc_ev = await connect(core, server, on_event)
    acc = acc_ev.accept
    monitor = monitor or default_mix(list(acc.stems))
    gains = parse_mix(monitor, list(acc.stems))
    cfg = JitterConfig() if jitter is None else JitterConfig(fixed_ms=jitter)
    po = Playout(list(acc.stems), gains, acc.channels, acc.block_frames, acc.sample_rate,
                 rate, out_ch, cfg, conceal)
    holder.append(po)
    cap = Capture(rate, in_ch)
    up = Uplink(rate, in_ch, acc.sample_rate, acc.channels, acc.block_frames)
    b = acc.block_frames
    jitter_samples = -(-int(round(po.jb.target_ms * acc.sample_rate / 1000)) // b) * b
    account = LatencyAccount(acc.sample_rate, rate, acc.delay, jitter_samples)
    cap.account = po.account = account
    name = PRESET_NAMES.get(acc.preset, "custom")
    d_ms = 1000 * acc.delay / acc.sample_rate
    heard = ", ".join(acc.stems[i] for i in po.active) or "nothing (every gain is 0)"
    stop = threading.Event()

    def playout_thread() -> None:
        while not stop.is_set():
            po.service(time.monotonic())
            time.sleep(SERVICE_S)

    def stated(now: float) -> float:
        """Once playout runs, the account's figure on the device clock (the latest
        playback callback's); before, an estimate from the parts."""
        if account.last_samples is not None:
            return account.ms(account.last_samples)
        rtt = stats["rtt_ms"][-1] if stats["rtt_ms"] else 0.0
        return d_ms + acc.reorder_ms + rtt / 2 + po.latency_ms(now) + 1000 * POLL_S

    print(f"live: {acc.model} preset {name}, D = {acc.delay} samples ({d_ms:.1f} ms); playout "
          f"buffer {'adaptive' if jitter is None else f'fixed {jitter:g} ms'} (starts at "
          f"{po.jb.target_ms:.1f} ms); redundancy "
          f"{'on' if core.redundancy else 'off'}; concealment {conceal}; monitoring "
          f"{heard}; stated end-to-end latency {stated(time.monotonic()):.1f} ms "
          f"(D + server reorder {acc.reorder_ms} ms + network + buffer + output ring); "
          "Ctrl-C stops", flush=True)
    thread = threading.Thread(target=playout_thread, name="stemlink-playout", daemon=True)
    scratch = np.zeros((cap.ring.capacity, in_ch), np.float32)
    rec = np.zeros(2, np.int64)
    stop_at = None if seconds is None else time.monotonic() + seconds
    cpu0, t0 = time.process_time(), time.monotonic()
    sent = 0
    last_said = stated(time.monotonic())
    loop = asyncio.get_running_loop()
    stop_ev = asyncio.Event()
    signals = _stop_on_signals(loop, stop_ev)
    device_latency: dict = {}
    stated_printed = False
    switch0 = sys.getswitchinterval()
    sys.setswitchinterval(min(switch0, GIL_SWITCH_S))
    thread.start()
    try:
        # the input stream is opened first: on JACK its callback then runs first in every
        # process cycle, which is what LatencyAccount assumes
        with sd.InputStream(device=input_device, channels=in_ch, samplerate=rate,
                            dtype="float32", callback=cap.callback) as ins, \
             sd.OutputStream(device=output_device, channels=out_ch, samplerate=rate,
                             dtype="float32", callback=po.callback) as outs:
            device_latency = {"input_ms": _latency_ms(ins), "output_ms": _latency_ms(outs)}
            next_ping = next_say = time.monotonic()
            while (stop_at is None or time.monotonic() < stop_at) and not stop_ev.is_set():
                await asyncio.sleep(POLL_S)
                if not stated_printed and account.first_samples is not None:
                    stated_printed = True
                    print(f"live: {account.describe()}; device buffers (PortAudio) in "
                          f"{device_latency['input_ms']:.1f} ms, out "
                          f"{device_latency['output_ms']:.1f} ms", flush=True)
                while cap.meta.get(rec):
                    pos, n = int(rec[0]), int(rec[1])
                    cap.ring.read(scratch[:n])
                    for ts, blk in up.feed(pos, scratch[:n]):
                        for dgram in core.audio_datagrams(blk, ts, time.monotonic_ns()):
                            proto.send(dgram)
                        sent += 1
                now = time.monotonic()
                if now >= next_ping:
                    proto.send(core.ping(now))
                    next_ping = now + 1.0
                if now >= next_say:
                    next_say = now + 1.0
                    s = stated(now)
                    if abs(s - last_said) > LATENCY_STEP_MS:
                        print(f"live: stated end-to-end latency {s:.1f} ms (playout buffer "
                              f"{po.jb.delay_ms(now):.1f} ms, target {po.jb.target_ms:.1f} ms)",
                              flush=True)
                        last_said = s
    except sd.PortAudioError as e:
        raise ClientError(f"sound device problem: {e}") from None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        sys.setswitchinterval(switch0)
        stop.set()
        thread.join(1.0)
        proto.send(core.bye(time.monotonic()))
        proto.transport.close()
    wall = max(time.monotonic() - t0, 1e-9)
    js = po.jb.stats
    stats.update({
        "delay_samples": acc.delay, "blocks_sent": sent, "stems": list(acc.stems),
        "jitter": {"mode": "adaptive" if jitter is None else f"fixed {jitter:g} ms",
                   "pushed": js.pushed, "late": js.late, "duplicates": js.duplicates,
                   "concealed": js.concealed, "inserted": js.inserted,
                   "cut_samples": js.cut_samples, "mean_delay_ms": js.mean_delay_ms,
                   "target_max_ms": js.target_max_ms},
        "capture_overruns": int(cap.overruns[0]),
        "device_input_overflows": int(cap.device_overflows[0]),
        "capture_gaps": up.gaps, "capture_gap_blocks": up.gap_blocks,
        "playback_underruns": int(po.underruns[0]), "inbox_dropped": po.inbox.dropped,
        "repaired": core.counters["recovered"],
        "cpu_percent": 100 * (time.process_time() - cpu0) / wall,
        "stated_latency_ms": stated(time.monotonic()),
        "latency": {**account.report(), "device_buffers": device_latency},
        "xruns": {**{f: int(v) for f, v in zip(IN_FLAGS, cap.flags, strict=True)},
                  **{f: int(v) for f, v in zip(OUT_FLAGS, po.flags, strict=True)},
                  "capture_ring_full": int(cap.overruns[0])},
        # times the device found the output ring dry (what the listener hears as a dropout
        # on top of the blocks the playout buffer concealed, jitter.concealed)
        "underruns": int(po.underruns[0]),
        "stopped_by_signal": stop_ev.is_set(),
        "first_signal_media_ts": up.first_signal,  # model samples; None if all silence
    })
    return stats


def _latency_ms(stream) -> float:
    """PortAudio's stated latency of a stream, ms (0 where a stand-in has none)."""
    try:
        return 1000 * float(getattr(stream, "latency", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _stop_on_signals(loop, stop: asyncio.Event) -> list:
    """SIGINT and SIGTERM set `stop`, so the streams close and BYE goes out normally."""
    done = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            done.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    return done


def save_stats(stats: dict, path: str | Path) -> None:
    """The `--stats` file: every counter run_live returns, as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stats, indent=2) + "\n")
