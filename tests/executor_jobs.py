"""Module-level callables for the process-pool tests (they must pickle)."""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
