"""Run a coroutine on uvloop where it is installed (Linux), else on asyncio's loop."""

from __future__ import annotations


def run_loop(coro):
    """Run `coro` to completion and return its result."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)
