"""The state of one service's families, written once for every store.

Each state object takes its cells from a :class:`~jobmetrics.cells.Store` (keys and rules
from the family table) and updates them under ``store.lock``; whether the store is a list
in this process or a file other processes read changes nothing here. After a fork, a
multi-process store gives the child a new file and calls :meth:`bind` on every state
object made in it, so the child starts from zero and nothing is counted twice.

Every recording method contains its own failures: they are logged once and never reach
the code being measured.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _errors
from .cells import Store
from .durations import Duration, ExemplarData
from .families import FAMILIES, FamilyTable
from .labels import OVERFLOW, Budget, clean
from .window import Window

__all__ = [
    "FAIL",
    "STATUSES",
    "STOP",
    "SUCCESS",
    "HttpState",
    "OuterRun",
    "QueueSizes",
    "QueueWaits",
    "TaskState",
    "outer_run",
]

SUCCESS, FAIL, STOP = 0, 1, 2
#: Values of the ``status`` label, indexed by the constants above.
STATUSES: Tuple[str, str, str] = ("success", "fail", "stop")
_GOOD, _BAD = 1, 0


def _add(store: Store, handle: int, amount: float, where: str) -> None:
    # The one-cell update off the hot paths (begin and end stay inline: a call costs).
    try:
        with store.lock:
            store.values[handle] += amount
    except Exception as exc:  # pragma: no cover - defensive
        _errors.report(where, exc)


class TaskState:
    """Running and pending counts, durations per status (their ``_count`` is
    ``task_total``), retries and the success-rate window of one task type."""

    __slots__ = ("__weakref__", "_durations", "_keys", "_pending", "_ratio", "_retries",
                 "_running", "_store", "type")

    def __init__(self, store: Store, table: FamilyTable, task_type: str) -> None:
        self.type = task_type
        self._store = store
        s = table.settings
        labels = (task_type,)
        self._durations = [
            Duration(store, table.names["process_time"], (task_type, status), s,
                     s.task_duration)
            for status in STATUSES]
        self._ratio = Window(store, table.names["success_rate"], labels,
                             table.window("success_rate"), s.age_buckets)
        self._running = self._pending = self._retries = 0
        self._keys = tuple((table.names[k], labels, (FAMILIES[k].rule,))
                           for k in ("running", "pending", "retries"))
        self.bind()

    def bind(self) -> None:
        """Take this type's cells in the store (again, after a fork)."""
        store = self._store
        self._running, self._pending, self._retries = (store.cell(k) for k in self._keys)
        for d in self._durations:
            d.bind()
        self._ratio.bind()

    def begin(self) -> float:
        """Mark one task running; return its start time (``perf_counter``)."""
        store = self._store
        try:
            with store.lock:
                store.values[self._running] += 1.0
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("task begin", exc)
        return perf_counter()

    def end(self, status: int, start: float) -> None:
        """Mark the task that began at ``start`` finished with ``status``."""
        now = perf_counter()
        store = self._store
        try:
            with store.lock:
                store.values[self._running] -= 1.0
                self._durations[status].observe(now - start, now)
                if status != STOP:
                    self._ratio.add(_GOOD if status == SUCCESS else _BAD, now)
        except Exception as exc:
            _errors.report("task end", exc)

    def add_pending(self, n: int) -> None:
        """Change the pending count by ``n`` (accepted but not started)."""
        _add(self._store, self._pending, n, "task pending")

    def begin_from_pending(self) -> float:
        """A pending task starts: pending -1, running +1 in one step."""
        store = self._store
        try:
            with store.lock:
                v = store.values
                v[self._pending] -= 1.0
                v[self._running] += 1.0
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("task begin", exc)
        return perf_counter()

    def retried(self) -> None:
        """One attempt ended in a retry (record it ``fail`` too, with :meth:`end`)."""
        _add(self._store, self._retries, 1.0, "task retry")

    def unrun(self) -> None:
        """Running -1 without finishing a task: an inner layer took the run over."""
        _add(self._store, self._running, -1.0, "task begin")


# ---------------------------------------------------------------------------------
# One unit of work is counted once: an outer layer (worker pool, executor, framework
# integration) runs its item as an OuterRun; a @m.task function called inside it takes
# the run over, so only the innermost type counts it.


class OuterRun:
    """A run begun by an outer layer, which an inner ``@m.task`` may take over."""

    __slots__ = ("claimed", "state")

    def __init__(self, state: TaskState) -> None:
        self.state = state
        self.claimed = False

    def claim(self) -> None:
        """An inner task starts: it counts the run, the outer layer does not."""
        if not self.claimed:
            self.claimed = True
            self.state.unrun()

    def end(self, status: int, start: float) -> None:
        """The outer layer's call returned: count it unless an inner task did."""
        if not self.claimed:
            self.state.end(status, start)


#: The outer run the current code executes in, if any.
outer_run: contextvars.ContextVar[Optional[OuterRun]] = contextvars.ContextVar(
    "jobmetrics_outer_run", default=None)


def http_budget(store: Optional[Store], family: str = "") -> Budget:
    """A budget of ``(method, code, operation)`` label sets (its limit is raised by each
    middleware to its ``max_series``)."""
    return Budget("HTTP label sets", 0, store, family,
                  hint=f"new ones are recorded as operation={OVERFLOW!r} (raise max_series, "
                       "or give operation= a coarser name)")


class HttpState:
    """In-flight count, request counts per ``(method, code, operation)`` and durations
    per ``(method, operation)``; ``budget`` bounds the label sets the middleware record."""

    __slots__ = ("__weakref__", "_durations", "_inflight", "_names", "_requests",
                 "_settings", "_store", "budget")

    def __init__(self, store: Store, table: FamilyTable) -> None:
        self._store = store
        self._settings = table.settings
        self._names = (table.names["inflight"], table.names["requests"],
                       table.names["request_duration"])
        self._durations: Dict[Tuple[str, str], Duration] = {}
        #: The label sets the middleware may record (:class:`~jobmetrics.labels.Budget`).
        self.budget = http_budget(store, self._names[1])
        self.bind()

    def bind(self) -> None:
        """Take the cells in the store (again, after a fork, or in a directory)."""
        self.budget.bind()
        self._inflight = self._store.cell((self._names[0], (), (FAMILIES["inflight"].rule,)))
        self._requests: Dict[Tuple[str, str, str], int] = {}
        for d in self._durations.values():
            d.bind()

    def begin(self) -> float:
        """One more request in flight; return its start time (``perf_counter``)."""
        store = self._store
        try:
            with store.lock:
                store.values[self._inflight] += 1.0
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("http begin", exc)
        return perf_counter()

    def end(self, method: str, code: str, operation: str, start: float,
            trace_id: Optional[str] = None) -> None:
        """The request that began at ``start`` is finished; ``trace_id`` (histogram
        durations only) becomes the exemplar of its bucket."""
        now = perf_counter()
        store = self._store
        try:
            key = (method, code, operation)
            dkey = (method, operation)
            with store.lock:
                h = self._requests.get(key)
                if h is None:
                    h = self._requests[key] = store.cell(
                        (self._names[1], clean(key), (FAMILIES["requests"].rule,)))
                series = self._durations.get(dkey)
                if series is None:
                    series = self._durations[dkey] = Duration(
                        store, self._names[2], clean(dkey), self._settings,
                        self._settings.http_duration)
                v = store.values
                v[self._inflight] -= 1.0
                v[h] += 1.0
                if trace_id is None:
                    series.observe(now - start, now)
                else:
                    series.observe_exemplar(now - start, now, trace_id)
        except Exception as exc:
            _errors.report("http end", exc)

    def exemplars(self) -> Dict[Tuple[str, ...], List[Optional[ExemplarData]]]:
        """This process's exemplars by duration label values."""
        with self._store.lock:
            return {clean(k): list(d.exemplars) for k, d in self._durations.items()
                    if d.exemplars is not None}


class QueueWaits:
    """The time items waited in instrumented queues, one duration series per name."""

    def __init__(self, store: Store, table: FamilyTable) -> None:
        self._store = store
        self._table = table

    def observer(self, name: str) -> Callable[[float, float], None]:
        """A function ``observe(seconds, now)`` recording one wait under ``name``."""
        store, table = self._store, self._table
        family = table.names["queue_wait"]
        series = store.state(
            ("queue_wait", family, name),
            lambda: Duration(store, family, clean((name,)), table.settings,
                             table.settings.task_duration))

        def observe(seconds: float, now: float) -> None:
            try:
                with store.lock:
                    series.observe(seconds, now)
            except Exception as exc:
                _errors.report("queue wait", exc)

        return observe


SizeFn = Callable[[Any], int]


class QueueSizes:
    """``queue name -> queues`` whose sizes are summed and published into this
    process's cells before each scrape (and every second by a thread when other
    processes scrape, see ``multiprocess``).

    Queues are held through weak references: a queue the program drops leaves the
    scrape and is not kept alive by the metrics.
    """

    def __init__(self, store: Store, table: FamilyTable,
                 on_register: Optional[Callable[[], None]] = None,
                 names: Optional[Budget] = None) -> None:
        #: The budget of queue names (instrumented queues take their name through it).
        self.names = names if names is not None else Budget("queue names", 1000)
        self._store = store
        self._family = table.names["queue_size"]
        self._lock = threading.Lock()
        self._queues: Dict[str, List[Tuple[weakref.ref[Any], SizeFn]]] = {}
        self._cells: Dict[str, int] = {}
        self._on_register = on_register

    def bind(self) -> None:
        """Forget the cells (after a fork): the next publish takes new ones."""
        self._cells = {}

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

    def publish(self) -> None:
        """Write every queue's current size into its cell; a queue gone is NaN (left
        out of the scrape)."""
        try:
            sizes = self.read()
            store = self._store
            rule = FAMILIES["queue_size"].rule
            with store.lock:
                for name, size in sizes.items():
                    h = self._cells.get(name)
                    if h is None:
                        h = self._cells[name] = store.cell(
                            (self._family, clean((name,)), (rule,)))
                    store.values[h] = float(size)
                for name in [n for n in self._cells if n not in sizes]:
                    store.values[self._cells.pop(name)] = float("nan")
        except Exception as exc:
            _errors.report("publish queue sizes", exc)


def make_task_state(store: Store, table: FamilyTable, task_type: str) -> TaskState:
    """The one :class:`TaskState` of ``task_type`` in ``store`` (shared by every service
    of the same prefix recording into it)."""
    return store.state(("task", table.names["running"], task_type),
                       lambda: TaskState(store, table, clean((task_type,))[0]))

