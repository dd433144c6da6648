"""A real audio stack for `live`: a JACK server on its dummy driver (paced in real time) and
two small JACK clients that play a song into the ports `live` captures from and record
the ports it plays to, both on the JACK frame clock.

The player and the recorder are separate JACK clients so the graph is a chain
(player -> live -> recorder) without a feedback cycle: JACK runs all three in the same
process cycle, in that order, so recorded frame f and played frame f are the same instant
and the lag between them is exactly what `live` adds. (`self_test` checks this with the
player wired straight to the recorder: lag 0.)

Each JACK server we start gets its own name, so nothing here touches a user's (or another
test's) default server; `live` reaches it through JACK_DEFAULT_SERVER.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemlink.errors import StemlinkError

JACK_PERIOD = 256  # frames per JACK cycle (the issue's `-p 256`)
START_TIMEOUT_S = 10.0
LOG_LINES = 200_000  # jackd log lines kept (xrun accounting)
PORTAUDIO_PORT = re.compile(r"^(?P<client>[^:]+):(?P<dir>in|out)_(?P<n>\d+)$")


class JackUnavailable(StemlinkError):
    """JACK (jackd, libjack or the JACK-Client package) cannot be used here."""


def _jack_module():
    try:
        import jack
    except (ImportError, OSError) as e:
        raise JackUnavailable(f"the JACK-Client package or libjack is missing ({e}); "
                              "`apt-get install jackd2` and `pip install JACK-Client`") from None
    return jack


def _client(name: str, server: str):
    jack = _jack_module()
    jack.set_error_function(_quiet)  # libjack prints every failed connection attempt
    jack.set_info_function(_quiet)
    try:
        return jack.Client(name, no_start_server=True, servername=server)
    except jack.JackError as e:
        raise JackUnavailable(f"cannot open a JACK client on server {server!r}: {e}") from None


def _quiet(message: str) -> None:
    pass


def raise_priority(pid: int, nice: int) -> int | None:
    """Give a child started in its own session (`start_new_session=True`) `nice` steps more
    of a busy machine: Linux schedules each session's autogroup as one unit, so its
    autogroup's nice is what counts (and the process's own nice where autogroups are off).
    Where allowed (root or CAP_SYS_NICE) the audio path (jackd, the server, live) then gets
    its share, as a musician's box would give it realtime priority. Returns the nice
    applied, or None where not permitted."""
    applied = None
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        applied = nice
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        applied = nice
    except OSError:
        pass
    return applied


def die_with_parent() -> None:
    """preexec_fn for children: SIGTERM them when the process that started them dies, so a
    killed benchmark or test never leaves a jackd (or a live client) behind (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class JackServer:
    """`jackd --realtime|--no-realtime [--sync] -d dummy -r RATE -p PERIOD` under a private
    name, or an existing server reused by name (then it is left running). Realtime falls
    back to --no-realtime where the scheduler refuses it (`realtime` says which ran).

    Sync mode makes the server wait for every client to finish each cycle. A client that
    runs late on a busy machine (the harness's own Python player and recorder included)
    then delays that cycle, which JACK still reports as an xrun, instead of having a
    half-written buffer read, which would corrupt the measurement itself; the dummy
    driver keeps the average rate real time."""

    def __init__(self, rate: int, period: int = JACK_PERIOD, reuse: str | None = None,
                 realtime: bool = False, sync: bool = False, nice: int = 0) -> None:
        self.rate, self.period, self.realtime = rate, period, realtime
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        if reuse:
            self.name = reuse
            probe = _client("stemlink-probe", reuse)
            self.rate, self.period = probe.samplerate, probe.blocksize
            probe.close()
            return
        jackd = shutil.which("jackd")
        if jackd is None:
            raise JackUnavailable("jackd is not installed (`apt-get install jackd2`)")
        _jack_module()
        self.name = f"stemlink-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        try:
            self._start(jackd, rate, period, realtime, sync, nice)
        except JackUnavailable:
            if not realtime:
                raise
            # realtime scheduling refused here (no rtprio): the issue's --no-realtime
            self.realtime = False
            self._start(jackd, rate, period, False, sync, nice)

    def _start(self, jackd: str, rate: int, period: int, realtime: bool, sync: bool,
               nice: int) -> None:
        self.proc = subprocess.Popen(
            [jackd, "-n", self.name, "--realtime" if realtime else "--no-realtime",
             *(["--sync"] if sync else []), "-d", "dummy", "-r", str(rate), "-p", str(period)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # a Ctrl-C meant for us reaches jackd only through stop()
            preexec_fn=die_with_parent)
        if nice:
            raise_priority(self.proc.pid, nice)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise JackUnavailable(f"jackd exited with status {self.proc.returncode}: "
                                      f"{_last_line(out)}")
            try:
                probe = _client("stemlink-probe", self.name)
                probe.close()
                break
            except JackUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise JackUnavailable(
                        f"jackd did not come up within {START_TIMEOUT_S:g} s") from None
                time.sleep(0.1)
        if realtime and not self._is_realtime():
            self.stop()
            raise JackUnavailable("jackd could not get realtime scheduling")
        # jackd logs every xrun: keep its pipe drained, or it would block writing to it
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        for line in self.proc.stdout:
            if len(self.log) < LOG_LINES:
                self.log.append(line.rstrip())

    def _is_realtime(self) -> bool:
        """Whether any of jackd's threads runs under a realtime policy (it falls back to
        normal scheduling with only a warning when refused)."""
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                policy = int((task / "stat").read_text().rsplit(")", 1)[1].split()[38])
                if policy in (1, 2):  # SCHED_FIFO, SCHED_RR
                    return True
        except (OSError, ValueError, IndexError):
            pass
        return False

    @property
    def env(self) -> dict:
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name}

    def stop(self) -> None:
        """Stop the jackd we started (never a reused one) and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.join(timeout=5)

    def xrun_blame(self) -> dict:
        """jackd's own account of its xruns (from its log): which client had not finished
        its cycle, or how often the dummy driver itself woke up late."""
        blame: dict[str, int] = {}
        for line in self.log:
            m = re.search(r"XRun: client = (\S+)", line)
            key = m.group(1) if m else ("driver woke late" if "TimedDriver::Process XRun"
                                        in line else None)
            if key:
                blame[key] = blame.get(key, 0) + 1
        return blame

    def __enter__(self) -> JackServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


@dataclass
class RigState:
    """Shared by the two process callbacks (plain attribute stores, no locks): the player
    sets `start` (the JACK frame its first song sample plays at) on the first cycle after
    `armed`; the recorder records from that frame on."""
    armed: bool = False
    start: int | None = None
    played: int = 0  # song frames played so far
    recorded: int = 0
    xruns: int = 0
    xrun_usecs: list = field(default_factory=list)


class Rig:
    """The player and the recorder. `song` is float32 [2, n] at the server's rate; `tail`
    extra frames are recorded after the song ends (room for the latency)."""

    def __init__(self, server: JackServer, song: np.ndarray, tail: int) -> None:
        self.server = server
        self.song = np.ascontiguousarray(song, np.float32)
        self.channels, self.n = self.song.shape
        self.rec = np.zeros((self.channels, self.n + tail), np.float32)
        self.state = RigState()
        self.player = _client("stemlink-player", server.name)
        self.recorder = _client("stemlink-recorder", server.name)
        self.outs = [self.player.outports.register(f"out_{c + 1}") for c in range(self.channels)]
        self.ins = [self.recorder.inports.register(f"in_{c + 1}") for c in range(self.channels)]
        self.player.set_process_callback(self._play)
        self.recorder.set_process_callback(self._record)
        self.player.set_xrun_callback(self._xrun)
        self.player.activate()
        self.recorder.activate()

    def _xrun(self, delay_usecs: float) -> None:
        self.state.xruns += 1
        if len(self.state.xrun_usecs) < 10000:
            self.state.xrun_usecs.append(float(delay_usecs))

    def _play(self, frames: int) -> None:
        st = self.state
        if st.armed and st.start is None:
            st.start = self.player.last_frame_time
        k = 0 if st.start is None else self.player.last_frame_time - st.start
        for c, port in enumerate(self.outs):
            buf = port.get_array()
            buf[:] = 0.0
            if st.start is not None and 0 <= k < self.n:
                m = min(frames, self.n - k)
                buf[:m] = self.song[c, k:k + m]
        if st.start is not None:
            st.played = min(self.n, max(st.played, k + frames))

    def _record(self, frames: int) -> None:
        st = self.state
        if st.start is None:
            return
        k = self.recorder.last_frame_time - st.start
        if 0 <= k < self.rec.shape[1]:
            m = min(frames, self.rec.shape[1] - k)
            for c, port in enumerate(self.ins):
                self.rec[c, k:k + m] = port.get_array()[:m]
            st.recorded = k + m

    # ---------------------------------------------------------------- wiring
    def portaudio_ports(self, before: set[str]) -> tuple[list[str], list[str]]:
        """`live`'s capture and playback ports: PortAudio's in_N/out_N ports that were not
        there before it started."""
        ins, outs = [], []
        for p in self.player.get_ports(is_audio=True):
            if p.name in before:
                continue
            m = PORTAUDIO_PORT.match(p.name)
            if m and not p.name.startswith("stemlink-"):
                (ins if m["dir"] == "in" else outs).append(p.name)
        key = lambda s: int(PORTAUDIO_PORT.match(s)["n"])  # noqa: E731
        return sorted(ins, key=key), sorted(outs, key=key)

    def port_names(self) -> set[str]:
        return {p.name for p in self.player.get_ports()}

    def wire(self, live_ins: list[str], live_outs: list[str]) -> None:
        """player -> live's capture ports (instead of the dummy's silent capture ports);
        live's playback ports -> recorder."""
        for name in live_ins:
            for other in self.player.get_all_connections(name):
                self.player.disconnect(other, name)
        for c, name in enumerate(live_ins[:self.channels]):
            self.player.connect(self.outs[c], name)
        for c, name in enumerate(live_outs[:self.channels]):
            self.recorder.connect(name, self.ins[c])

    def play(self) -> None:
        self.state.armed = True

    def wait_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.state.recorded < self.rec.shape[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.state.recorded >= self.rec.shape[1]

    def close(self) -> None:
        for c in (self.player, self.recorder):
            try:
                c.deactivate()
                c.close()
            except Exception:  # noqa: BLE001 (a JACK server that died under us)
                pass


def self_test(server: JackServer, seconds: float = 0.5) -> int:
    """Player wired straight to the recorder: returns the lag (frames) the rig itself
    measures, which must be 0 for its figures to be the device under test's."""
    rng = np.random.default_rng(0)
    song = rng.standard_normal((2, int(seconds * server.rate))).astype(np.float32) * 0.1
    rig = Rig(server, song, tail=server.period * 4)
    try:
        for c in range(2):
            rig.player.connect(rig.outs[c], rig.ins[c])
        rig.play()
        rig.wait_done(seconds + 5)
    finally:
        rig.close()
    n = song.shape[1]
    x = np.fft.irfft(np.fft.rfft(rig.rec[0], 2 * rig.rec.shape[1])
                     * np.conj(np.fft.rfft(song[0], 2 * rig.rec.shape[1])))
    return int(np.argmax(x[:n]))


def portaudio_jack_device(server: JackServer) -> int:
    """The index of PortAudio's JACK device, looked up in a child process (importing
    sounddevice here would open a PortAudio JACK client inside the benchmark itself)."""
    code = ("import sounddevice as sd\n"
            "for h in sd.query_hostapis():\n"
            "    if 'JACK' in h['name'] and h['devices']:\n"
            "        print(h['default_input_device'] if h['default_input_device'] >= 0 "
            "else h['devices'][0]); break\n"
            "else:\n    print(-1)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=server.env, capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise JackUnavailable("PortAudio did not answer within 30 s") from None
    out = r.stdout.strip().splitlines()
    if r.returncode != 0 or not out or out[-1] == "-1":
        raise JackUnavailable("PortAudio has no JACK device (is libportaudio2 built with JACK "
                              f"and sounddevice installed?) {_last_line(r.stderr)}")
    return int(out[-1])
