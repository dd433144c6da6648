"""Progress bars for long work (tqdm), drawn on stderr only when it is a terminal.

Bars never go to a pipe or a log file: there they would be a stream of carriage returns.
`--quiet` turns them off on a terminal too. Work that reports progress takes a plain
`(done, total)` callback, so it needs to know nothing about tqdm.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

Progress = Callable[[int, int], None]
_open: weakref.WeakSet[tqdm] = weakref.WeakSet()  # bars not yet closed, for close_all
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]"


def enabled(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Bars are drawn only on a terminal, and not with --quiet."""
    stream = sys.stderr if stream is None else stream
    try:
        return not quiet and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def bar(desc: str, total: int | None = None, unit: str = "", *, on: bool = True,
        scale: bool = False) -> tqdm:
    """A tqdm bar on stderr with elapsed time and ETA; a silent no-op when `on` is false.
    `scale` writes large counts as 179k (for samples)."""
    b = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not on,
             bar_format=BAR_FORMAT if total else None, dynamic_ncols=True, leave=True,
             unit_scale=scale)
    _open.add(b)
    return b


def close_all() -> None:
    """End every open bar where it stands (before an error message, so that the message
    is not followed by a bar redrawn at exit)."""
    for b in list(_open):
        b.close()
    _open.clear()


def callback(desc: str, unit: str = "", *, on: bool = True,
             scale: bool = False) -> Progress | None:
    """A `(done, total)` callback that opens a bar on its first call and closes it at the
    end; None when bars are off, so the work skips even the calls."""
    if not on:
        return None
    state: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        b = state.get("bar")
        if b is None:
            b = state["bar"] = bar(desc, total, unit, scale=scale)
        b.update(done - b.n)
        if done >= total:
            b.close()

    return update


def say(on: bool) -> Callable[[str], None]:
    """A line printer that keeps an open bar intact (tqdm.write) when bars are on."""
    if on:
        return lambda s: tqdm.write(s, file=sys.stderr)
    return lambda s: print(s, file=sys.stderr, flush=True)


class timed:  # noqa: N801  (used as a context manager, like open)
    """A bar for work paced by the clock (real-time streaming): it advances with elapsed
    time, from a daemon thread, once per `every_s`, and completes on exit."""

    def __init__(self, desc: str, seconds: float, *, on: bool = True,
                 every_s: float = 0.5) -> None:
        self.desc, self.seconds, self.on, self.every_s = desc, seconds, on, every_s
        self._stop = threading.Event()
        self._bar: tqdm | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> timed:
        if self.on:
            self._bar = bar(self.desc, round(self.seconds), "s")
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            assert self._bar is not None
            self._bar.update(min(round(time.monotonic() - t0), self._bar.total) - self._bar.n)

    def __exit__(self, *exc) -> None:
        if self._bar is None or self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._bar.update(self._bar.total - self._bar.n)
        self._bar.close()
