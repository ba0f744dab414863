"""Queue sizes read at scrape time from queues held weakly."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _errors

__all__ = ["QueueSizes"]

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
