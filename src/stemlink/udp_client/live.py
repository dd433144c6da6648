"""`stemlink live`: sound card in -> server -> jitter buffer -> sound card out, headless.

The PortAudio callbacks only copy: capture hands blocks to the event loop with
call_soon_threadsafe; playback pops the jitter buffers and mixes. A device rate other than
the model's is converted with streaming python-soxr resamplers on both sides.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np

from stemlink import audio as aio
from stemlink.udp_client.core import ClientCore, ClientError, Pong, StemBlock
from stemlink.udp_client.jitter import JitterBuffer
from stemlink.udp_client.latency import LatencyAccount
from stemlink.udp_client.mix import parse_mix
from stemlink.udp_client.transport import connect
from stemlink.wire import packets as pk
from stemlink.wire.constants import PRESET_NAMES

SIGNAL_THRESHOLD = 1e-3  # -60 dBFS: the first input sample above it is reported (stats)


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise ClientError(f"sound devices are unavailable ({e}); install PortAudio and "
                          "`pip install sounddevice`") from None
    return sd


class Playout:
    """Model-rate jitter buffers per monitored stem, mixed and resampled for the device."""

    def __init__(self, stems: list[str], gains: np.ndarray, channels: int, block: int,
                 model_rate: int, device_rate: int, out_channels: int, target: int) -> None:
        self.gains = gains
        self.active = [i for i, g in enumerate(gains) if g != 0]
        self.buffers = {i: JitterBuffer(channels, block, target) for i in self.active}
        self.block, self.channels, self.out_channels = block, channels, out_channels
        self._tmp = np.zeros((channels, block), np.float32)
        self._mix = np.zeros((channels, block), np.float32)
        self._carry = np.zeros((out_channels, 0), np.float32)
        self._lock = threading.Lock()
        self._rs = None
        self.account: LatencyAccount | None = None  # set by run_live
        if device_rate != model_rate:
            import soxr

            self._rs = soxr.ResampleStream(model_rate, device_rate, channels, dtype="float32")

    def push(self, stem: int, ts: int, block: np.ndarray) -> None:
        jb = self.buffers.get(stem)
        if jb is not None:
            with self._lock:
                jb.push(ts, block)

    def _next_block(self) -> np.ndarray:
        self._mix[...] = 0.0
        with self._lock:
            for i, jb in self.buffers.items():
                jb.pop(self._tmp)
                np.multiply(self._tmp, self.gains[i], out=self._tmp)
                self._mix += self._tmp
        return self._mix

    def fill(self, outdata: np.ndarray) -> None:
        """PortAudio callback body: always fills the whole buffer."""
        frames = outdata.shape[0]
        acct = self.account
        if acct is not None and self.active:
            play = self.buffers[self.active[0]].play
            if play is not None:  # playout has started: state where it sits
                held = self._carry.shape[1] + (self._rs.delay() if self._rs is not None else 0)
                acct.on_playout(play, held)
        while self._carry.shape[1] < frames:
            blk = self._next_block()
            if self._rs is not None:
                blk = self._rs.resample_chunk(blk.T).T
            blk = aio.to_channels(blk, self.out_channels)
            self._carry = np.concatenate([self._carry, blk], axis=1)
        outdata[:] = self._carry[:, :frames].T
        self._carry = self._carry[:, frames:]


async def run_live(server: tuple[str, int], input_device, output_device, monitor: str,
                   preset: str | None, psk: bytes, target_blocks: int, block: int,
                   seconds: float | None = None, devices=None) -> dict:
    """Run until Ctrl-C or SIGTERM (or for `seconds`); both stop the streams, say BYE and
    return the stats. `devices` is the sounddevice module, or an object with the same
    query_devices/InputStream/OutputStream/PortAudioError shape."""
    sd = devices if devices is not None else _sounddevice()
    try:
        dev_in = sd.query_devices(input_device, "input")
        dev_out = sd.query_devices(output_device, "output")
    except (ValueError, sd.PortAudioError) as e:
        raise ClientError(f"sound device problem: {e}") from None
    rate = int(dev_in["default_samplerate"])
    in_ch = min(int(dev_in["max_input_channels"]), 2)
    out_ch = min(int(dev_out["max_output_channels"]), 2)
    if in_ch < 1 or out_ch < 1:
        raise ClientError("the chosen devices have no input or no output channels")
    core = ClientCore(sample_rate=rate, channels=in_ch, block=block, preset=preset, psk=psk)
    loop = asyncio.get_running_loop()
    playout: list[Playout] = []
    stats = {"rtt_ms": []}
    # xruns as the device reports them (callback status flags); capture blocks the event
    # loop could not take (queue full) are overruns of our own
    xruns = {"input_overflow": 0, "input_underflow": 0, "output_underflow": 0,
             "output_overflow": 0, "capture_queue_full": 0}
    scratch: dict[int, np.ndarray] = {}

    def on_event(ev) -> None:
        if isinstance(ev, StemBlock) and playout:
            h = ev.header
            buf = scratch.setdefault(h.channels, np.zeros((h.channels, h.frames), np.float32))
            pk.read_media(ev.data, h, buf)
            playout[0].push(h.stem, h.timestamp, buf)
        elif isinstance(ev, Pong):
            stats["rtt_ms"].append(ev.rtt_ns / 1e6)

    proto, acc_ev = await connect(core, server, on_event)
    acc = acc_ev.accept
    gains = parse_mix(monitor, list(acc.stems))
    po = Playout(list(acc.stems), gains, acc.channels, acc.block_frames, acc.sample_rate,
                 rate, out_ch, target_blocks)
    playout.append(po)
    account = LatencyAccount(acc.sample_rate, rate, acc.delay,
                             po.buffers[po.active[0]].delay_samples if po.active else 0)
    po.account = account
    name = PRESET_NAMES.get(acc.preset, "custom")
    print(f"live: {acc.model} preset {name} D = {acc.delay} samples "
          f"({1000 * acc.delay / acc.sample_rate:.1f} ms) + jitter buffer "
          f"{1000 * po.buffers[po.active[0]].delay_samples / acc.sample_rate:.1f} ms; "
          f"monitoring {monitor}; Ctrl-C stops", flush=True)
    captured: asyncio.Queue = asyncio.Queue(maxsize=256)
    rs_in = None
    if rate != acc.sample_rate:
        import soxr

        rs_in = soxr.ResampleStream(rate, acc.sample_rate, acc.channels, dtype="float32")

    def in_cb(indata, frames, t, status) -> None:
        if status:
            _count_status(xruns, status)
        account.on_capture(frames)
        data = indata.copy()
        loop.call_soon_threadsafe(_offer, captured, data, xruns)

    def out_cb(outdata, frames, t, status) -> None:
        if status:
            _count_status(xruns, status)
        po.fill(outdata)

    pending = np.zeros((acc.channels, 0), np.float32)
    ts = 0
    stop_at = None if seconds is None else time.monotonic() + seconds
    stop = asyncio.Event()
    signals = _stop_on_signals(loop, stop)
    stated_printed = False
    first_signal = None
    device_latency = {}
    try:
        # the input stream is opened first: on JACK its callback then runs first in every
        # process cycle, which is what LatencyAccount assumes
        with sd.InputStream(device=input_device, channels=in_ch, samplerate=rate,
                            dtype="float32", callback=in_cb) as ins, \
             sd.OutputStream(device=output_device, channels=out_ch, samplerate=rate,
                             dtype="float32", callback=out_cb) as outs:
            device_latency = {"input_ms": 1000 * float(getattr(ins, "latency", 0.0)),
                              "output_ms": 1000 * float(getattr(outs, "latency", 0.0))}
            next_ping = time.monotonic()
            while (stop_at is None or time.monotonic() < stop_at) and not stop.is_set():
                if not stated_printed and account.first_samples is not None:
                    stated_printed = True
                    print(f"live: {account.describe()}; device buffers (PortAudio) in "
                          f"{device_latency['input_ms']:.1f} ms, out "
                          f"{device_latency['output_ms']:.1f} ms", flush=True)
                try:
                    data = await asyncio.wait_for(captured.get(), 0.5)
                except asyncio.TimeoutError:
                    continue
                x = aio.to_channels(np.ascontiguousarray(data.T), acc.channels)
                if rs_in is not None:
                    x = rs_in.resample_chunk(x.T).T
                if first_signal is None and x.size:  # where sound first came in, media time
                    loud = np.flatnonzero(np.max(np.abs(x), axis=0) > SIGNAL_THRESHOLD)
                    if loud.size:
                        first_signal = ts + pending.shape[1] + int(loud[0])
                pending = np.concatenate([pending, x], axis=1)
                b = acc.block_frames
                while pending.shape[1] >= b:
                    proto.send(core.audio(pending[:, :b], ts, time.monotonic_ns()))
                    pending = pending[:, b:]
                    ts += b
                if time.monotonic() >= next_ping:
                    proto.send(core.ping(time.monotonic()))
                    next_ping = time.monotonic() + 1.0
    except sd.PortAudioError as e:
        raise ClientError(f"sound device problem: {e}") from None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        proto.send(core.bye(time.monotonic()))
        proto.transport.close()
    stats["delay_samples"] = acc.delay
    stats["latency"] = {**account.report(), "device_buffers": device_latency}
    stats["xruns"] = xruns
    stats["underruns"] = sum(jb.stats.concealed for jb in po.buffers.values())
    stats["stopped_by_signal"] = stop.is_set()
    stats["first_signal_media_ts"] = first_signal  # model samples; None if all silence
    stats["jitter"] = {acc.stems[i]: vars(jb.stats) for i, jb in po.buffers.items()}
    stats["blocks_sent"] = ts // acc.block_frames
    return stats


def _offer(q: asyncio.Queue, data, xruns: dict) -> None:
    if not q.full():
        q.put_nowait(data)
    else:
        xruns["capture_queue_full"] += 1


def _count_status(xruns: dict, status) -> None:
    for flag in ("input_overflow", "input_underflow", "output_underflow", "output_overflow"):
        if getattr(status, flag, False):
            xruns[flag] += 1


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
    """The `--stats` file: xruns, underruns, concealed blocks and the stated latency."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stats, indent=2) + "\n")
