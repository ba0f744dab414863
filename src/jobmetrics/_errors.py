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
    logger.error(
        "jobmetrics: recording failed in %s; the value was dropped (logged once)",
        where,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
