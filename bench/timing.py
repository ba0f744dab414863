"""Shared timing helpers for the benchmarks: best-of-N per-call times."""

from __future__ import annotations

import asyncio
import timeit
from typing import Any, Awaitable, Callable


def per_call(fn: Callable[[], Any], number: int = 200_000, repeat: int = 7) -> float:
    """Best per-call time of ``fn`` in seconds (min over ``repeat`` runs of ``number``)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def per_await(make: Callable[[], Awaitable[Any]], number: int = 100_000, repeat: int = 7) -> float:
    """Best per-call time of ``await make()`` inside one running event loop."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        best = float("inf")
        for _ in range(repeat):
            t0 = loop.time()
            for _ in range(number):
                await make()
            best = min(best, loop.time() - t0)
        return best / number

    return asyncio.run(run())


def us(seconds: float) -> str:
    """Format seconds as microseconds."""
    return f"{seconds * 1e6:.3f}"
