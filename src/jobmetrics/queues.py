"""Queue sizes read at scrape time from queues held weakly."""

from __future__ import annotations

import threading
import weakref
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _errors
from .durations import DurationSeries, duration_metric, new_duration
from .settings import Settings

__all__ = ["QueueSizes", "QueueWaits", "wait_metric"]


def wait_metric(settings: Settings) -> Any:
    """The empty ``<prefix>queue_wait_seconds`` family, of the ``task_duration`` kind."""
    return duration_metric(settings.prefix + "queue_wait_seconds",
                           "Time items waited in an instrumented queue, from put to get, "
                           "in seconds.", settings.task_duration)

SizeFn = Callable[[Any], int]


class QueueSizes:
    """``queue name -> queues`` whose sizes are summed at each scrape.

    Queues are held through weak references: a queue the program drops leaves the
    scrape and is not kept alive by the metrics.
    """

    def __init__(self, on_register: Optional[Callable[[], None]] = None) -> None:
        self._lock = threading.Lock()
        self._queues: Dict[str, List[Tuple[weakref.ref[Any], SizeFn]]] = {}
        self._on_register = on_register

    def register(self, name: str, queue: Any, size: SizeFn) -> None:
        """Report ``size(queue)`` under ``name`` for as long as ``queue`` lives."""
        with self._lock:
            self._queues.setdefault(name, []).append((weakref.ref(queue), size))
        if self._on_register is not None:
            self._on_register()

    def read(self) -> Dict[str, int]:
        """Current size per name; names whose queues are all gone are dropped."""
        with self._lock:
            items = {name: list(refs) for name, refs in self._queues.items()}
        out: Dict[str, int] = {}
        dead = False
        for name, refs in items.items():
            total, live = 0, 0
            for ref, size in refs:
                q = ref()
                if q is None:
                    dead = True
                    continue
                live += 1
                try:
                    total += int(size(q))
                except Exception as exc:
                    # qsize() is not implemented on every platform (macOS multiprocessing).
                    _errors.report(f"queue size of {name!r}", exc)
            if live:
                out[name] = total
        if dead:
            with self._lock:
                for name in list(self._queues):
                    alive = [(r, s) for r, s in self._queues[name] if r() is not None]
                    if alive:
                        self._queues[name] = alive
                    else:
                        del self._queues[name]
        return out


class QueueWaits:
    """``queue name -> duration series`` of the time items waited in instrumented queues.

    Emitted as ``<prefix>queue_wait_seconds{queue}``, a summary or histogram as the
    ``task_duration`` setting says; a name appears once one of its queues is instrumented.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._series: Dict[str, DurationSeries] = {}

    def observer(self, name: str) -> Callable[[float, float], None]:
        """A function ``observe(seconds, now)`` recording one wait under ``name``."""
        with self._lock:
            series = self._series.get(name)
            if series is None:
                series = new_duration(self._settings, self._settings.task_duration,
                                      perf_counter())
                self._series[name] = series
        lock = self._lock

        def observe(seconds: float, now: float) -> None:
            with lock:
                series.observe(seconds, now)

        return observe

    def emit(self, metric: Any, quantiles: Sequence[float], now: float) -> bool:
        """Add every queue's samples to ``metric``; ``False`` when there is none."""
        with self._lock:
            for name, series in sorted(self._series.items()):
                series.emit(metric, {"queue": name}, quantiles, now)
            return bool(self._series)
