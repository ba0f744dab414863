"""State of the three ``http_*`` families, shared by the ASGI and WSGI middleware."""

from __future__ import annotations

import threading
from time import perf_counter
from typing import Dict, Optional, Protocol, Tuple

from . import _errors
from .durations import DurationSeries, HistogramSeries, new_duration
from .settings import Settings

__all__ = ["HttpRecorder", "HttpSeries"]


class HttpRecorder(Protocol):
    """What the middleware needs of the ``http_*`` state (in-process or multi-process)."""

    def begin(self) -> float:
        """One more request in flight; return its start time."""

    def end(self, method: str, code: str, operation: str, start: float) -> None:
        """The request that began at ``start`` is finished."""


class HttpSeries:
    """In-flight count, request counts per ``(method, code, operation)`` and durations
    per ``(method, operation)``, behind one lock. Thread-safe."""

    __slots__ = ("_lock", "_settings", "counts", "durations", "inflight")

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.inflight = 0
        self.counts: Dict[Tuple[str, str, str], int] = {}
        self.durations: Dict[Tuple[str, str], DurationSeries] = {}

    def begin(self) -> float:
        """One more request in flight; return its start time (``perf_counter``)."""
        try:
            with self._lock:
                self.inflight += 1
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("http begin", exc)
        return perf_counter()

    def end(self, method: str, code: str, operation: str, start: float,
            trace_id: Optional[str] = None) -> None:
        """The request that began at ``start`` is finished; ``trace_id`` (histogram
        durations only) becomes the exemplar of its bucket."""
        now = perf_counter()
        try:
            with self._lock:
                self.inflight -= 1
                key = (method, code, operation)
                self.counts[key] = self.counts.get(key, 0) + 1
                dkey = (method, operation)
                series = self.durations.get(dkey)
                if series is None:
                    series = self.durations[dkey] = new_duration(
                        self._settings, self._settings.http_duration, now
                    )
                if trace_id is not None and isinstance(series, HistogramSeries):
                    series.observe_exemplar(now - start, now, trace_id)
                else:
                    series.observe(now - start, now)
        except Exception as exc:
            _errors.report("http end", exc)

    def lock(self) -> threading.Lock:
        """The lock to hold while reading the state."""
        return self._lock
