"""Run a command the way a user at a terminal does: under a pseudo-terminal (pty), so that
isatty() is true for its stdout and stderr, with a 120 x 40 window."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

ROWS, COLS = 40, 120


def run_in_pty(args: list[str], timeout: float = 300, env: dict | None = None,
               interrupt_after: str | None = None) -> tuple[int, str]:
    """(exit code, everything the command wrote to the terminal, decoded). With
    `interrupt_after`, Ctrl-C (SIGINT) is sent once that text has appeared."""
    # the window size comes from the terminal, as for a user; pytest's environment may
    # carry COLUMNS/LINES of its own, which would override it
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if k not in ("COLUMNS", "LINES")}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "stemlink", *map(str, args)], stdin=slave,
                         stdout=slave, stderr=slave, close_fds=True, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not data:
                break
            chunks.append(data)
            if interrupt_after and interrupt_after.encode() in b"".join(chunks):
                p.send_signal(signal.SIGINT)
                interrupt_after = None
    finally:
        os.close(master)
        if p.poll() is None and time.monotonic() >= deadline:
            p.kill()
    return p.wait(timeout=30), b"".join(chunks).decode(errors="replace")
