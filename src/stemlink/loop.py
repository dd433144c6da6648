"""Run a coroutine on uvloop where it is installed (Linux), else on asyncio's loop."""

from __future__ import annotations


def run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:
        import asyncio

        asyncio.run(coro)
        return
    uvloop.run(coro)
