"""Servers under test run as child processes, so their CPU use is their own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from stemlink.errors import StemlinkError


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Child:
    """A stemlink process under test, ready once its stderr shows `ready`; its stderr is
    kept (1000 lines) and drained so that a chatty child never blocks on a full pipe.

    popen: extra subprocess.Popen arguments (a session of its own, say); on_spawn runs
    with the process before it is awaited (to raise its priority); start_timeout_s bounds
    the wait between banner lines; failures raise `error` naming the child `name`."""

    def __init__(self, args: list[str], ready: str, stats: Path | None = None, *,
                 popen: dict | None = None, on_spawn=None,
                 start_timeout_s: float | None = None, error: type = StemlinkError,
                 name: str = "server under test") -> None:
        self.stats = stats
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, **(popen or {}))
        if on_spawn is not None:
            on_spawn(self.proc)
        self.log: list[str] = []
        deadline = None if start_timeout_s is None else time.monotonic() + start_timeout_s
        while ready:
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                raise error(f"{name} did not start in time")
            line = self.proc.stderr.readline()  # the server prints its banner when ready
            if not line and self.proc.poll() is not None:
                raise error(f"{name} exited: {''.join(self.log)[-500:]}")
            self.log.append(line)
            if ready in line:
                break
        threading.Thread(target=self._drain, daemon=True).start()
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(self.proc.pid)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if len(self.log) < 1000:
                self.log.append(line)

    def cpu_use(self) -> float:
        """Cores used since it became ready (1.0 = one core busy)."""
        return (cpu_seconds(self.proc.pid) - self.cpu0) / max(time.monotonic() - self.t0, 1e-9)

    def stop(self) -> dict:
        """SIGTERM (SIGKILL after 20 s); the stats file it wrote, if any."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stats is None:
            return {}
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}


def stemlink_server(model: str, port: int, preset: str, backend: str, stats: Path,
                    max_sessions: int = 64, extra: list[str] | None = None) -> Child:
    """extra: more `serve` flags (workers, batching). Every benchmark client comes from
    127.0.0.1: the per-address cap is lifted to max_sessions."""
    return Child(["-m", "stemlink", "serve", "--model", model, "--port", str(port),
                  "--preset", preset, "--backend", backend, "--max-sessions",
                  str(max_sessions), "--sessions-per-address", str(max_sessions),
                  "--handshake-rate", "1000", "--handshake-burst", str(max(16, 4 * max_sessions)),
                  "--log-level", "warning", "--compute-stats", str(stats),
                  *(extra or [])],
                 "stemlink serving", stats)


def baseline_server(model: str, port: int, backend: str, stats: Path) -> Child:
    child = Child(["-m", "stemlink.bench.baseline", "--model", model, "--port", str(port),
                   "--backend", backend, "--stats", str(stats)], "", stats)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # uvicorn prints nothing at log level warning
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        child.stop()
        raise StemlinkError("baseline server did not start in time")
    child.t0, child.cpu0 = time.monotonic(), cpu_seconds(child.proc.pid)
    return child


def stemlink_relay(target_port: int, args: list[str], stats: Path,
                   tcp: bool = False) -> tuple[Child, int, str]:
    """A `stemlink relay` child in front of 127.0.0.1:target_port; -> (child, its port,
    the command line as a user would type it)."""
    port = free_port(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    cmd = ["relay", "--listen", f"127.0.0.1:{port}", "--to", f"127.0.0.1:{target_port}",
           *(["--tcp"] if tcp else []), *args]
    child = Child(["-m", "stemlink", *cmd, "--stats", str(stats)],
                  "stemlink relay listening", stats)
    return child, port, "stemlink " + " ".join(cmd)
