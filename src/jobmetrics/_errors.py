"""Containment of jobmetrics' own failures: they are logged once and never reach user code."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("jobmetrics")

_reported: set[str] = set()
_lock = threading.Lock()


def report(where: str, exc: BaseException) -> None:
    """Log a failure inside jobmetrics once per place, and swallow it.

    Instrumentation must never change what the host sees, so a bug or a bad value in a
    recording path is logged (once, so a hot path cannot flood the log) and dropped.
    """
    with _lock:
        if where in _reported:
            return
        _reported.add(where)
    # Not only recording: serving /metrics, reading a queue's size, a worker's directory.
    logger.error(
        "jobmetrics: %s failed; jobmetrics goes on without it, the host is unaffected "
        "(logged once)",
        where,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
