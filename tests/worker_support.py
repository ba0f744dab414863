"""Readers shared by the job-framework integration tests (Celery, RQ, Dramatiq)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Tuple

from mpservers import P
from promcheck import Labels

Got = Dict[Tuple[str, Labels], float]


def total(got: Got, type: str, status: str) -> float:
    """``task_total{type, status}`` in a parsed scrape (-1 when absent)."""
    return got.get((P + "task_total", (("status", status), ("type", type))), -1.0)


def gauge(got: Got, family: str, type: str) -> float:
    """A per-type gauge (``running_task``, ``pending_task``) in a parsed scrape."""
    return got.get((P + family, (("type", type),)), 0.0)


def wait_file(path: Path) -> int:
    """The pid a held job wrote to ``path``, once it has."""
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return int(path.read_text())
