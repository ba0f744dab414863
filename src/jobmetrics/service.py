"""One service's families on one registry: its state in a store, and their collector.

A :class:`Service` exists per (registry, prefix); every :class:`~jobmetrics.JobMetrics`
with equal settings on that registry shares it. Its store is a
:class:`~jobmetrics.cells.MemoryStore` of its own, or, in multi-process mode, this
process's :class:`~jobmetrics.multiprocess.FileStore` of the directory (shared with every
other service of the process recording there; state objects of one prefix are shared
too, so nothing is counted twice).
"""

from __future__ import annotations

import threading
from time import perf_counter
from typing import Dict, Iterable, List, Optional, Union

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import _errors
from .cells import MemoryStore
from .collect import merge, render
from .families import FAMILIES, FamilyTable, Merge
from .labels import Budget
from .multiprocess import FileStore
from .settings import Settings
from .state import HttpState, QueueSizes, QueueWaits, TaskState, make_task_state

__all__ = ["Service"]


class Service(Collector):
    """The state of every family of one prefix, and the collector that reads it."""

    def __init__(self, settings: Settings, node: str, pool: str, workers: int) -> None:
        self.settings = settings
        self.table = table = FamilyTable(settings)
        self.info = {"node": node, "pool": pool, "workers": str(workers)}
        self.store: Union[MemoryStore, FileStore] = (
            FileStore.for_directory(settings.multiprocess_dir) if settings.multiprocess_dir
            else MemoryStore())
        store = self.store
        names = table.names
        self.http: HttpState = store.state(("http", names["inflight"]),
                                           lambda: HttpState(store, table))
        self.queues: QueueSizes = store.state(
            ("queue_size", names["queue_size"]),
            lambda: QueueSizes(store, table, on_register=self._queue_registered,
                               names=self._budget("queue names", names["queue_size"])))
        self.queue_waits = QueueWaits(store, table)
        self._tasks: Dict[str, TaskState] = {}
        self._types = self._budget("task types", names["running"])
        self._lock = threading.Lock()
        self._families = frozenset(names[k] for k, f in FAMILIES.items()
                                   if f.merge is not Merge.SINGLE)
        self._windows = {names[k]: table.window(k) for k, f in FAMILIES.items()
                         if f.merge in (Merge.DURATION, Merge.RATIO)}

    def _budget(self, what: str, family: str) -> Budget:
        # One per store and family: every service on it shares the budget, and it holds
        # for a multi-process directory's merged output.
        limit = self.settings.max_series
        budget = self.store.state(("budget", family),
                                  lambda: Budget(what, limit, self.store, family))
        budget.limit = max(budget.limit, limit)
        return budget

    def _queue_registered(self) -> None:
        if isinstance(self.store, FileStore):
            self.queues.publish()
            self.store.publish_every(self.queues.publish)

    @property
    def directory(self) -> Optional[str]:
        """The multi-process directory recorded into, or ``None`` (this process's memory)."""
        store = self.store
        return store.directory if isinstance(store, FileStore) else None

    def record_into(self, directory: str) -> None:
        """Record into the multi-process ``directory`` (absolute) from now on, values so far
        kept; see :meth:`jobmetrics.JobMetrics.record_into`."""
        store = self.store
        if isinstance(store, MemoryStore):
            self.store = FileStore.adopt(store, directory)

    def task_state(self, task_type: str) -> TaskState:
        """The state of ``task_type``, made on first use."""
        state = self._tasks.get(task_type)
        if state is None:
            with self._lock:
                state = self._tasks.get(task_type)
                if state is None:
                    admitted = self._types.admit(task_type)
                    state = self._tasks.get(admitted)
                    if state is None:
                        state = self._tasks[admitted] = make_task_state(
                            self.store, self.table, admitted)
        return state

    # -- collector ---------------------------------------------------------------

    def describe(self) -> List[Metric]:
        return [self.table.new(key) for key, fam in FAMILIES.items()
                if key != "batch_success"]

    def collect(self) -> Iterable[Metric]:
        try:
            self.queues.publish()
            snapshots = self.store.snapshots()
            # After reading: no writer's current bucket is ahead of this scrape's.
            now = perf_counter()
            merged = merge(snapshots, self._families, self._windows,
                           self.settings.age_buckets, now)
            exemplars = self.http.exemplars() if isinstance(self.store, MemoryStore) else None
            live = sum(1 for s in snapshots if s.live)
            return render(merged, self.table, self.info, live, exemplars)
        except Exception as exc:  # a scrape must not fail because of jobmetrics
            _errors.report("collect", exc)
            return []
