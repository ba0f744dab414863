"""Transparent proxies over queues: ``queue_size`` at scrape time, and per item the
``pending_task{type}`` count and the time it waited (``queue_wait_seconds``).

The proxy is a ``wrapt.ObjectProxy``: ``isinstance`` holds and every attribute the
proxy does not override reaches the queue unchanged. Only ``put``/``put_nowait`` and
``get``/``get_nowait`` are overridden, and they return and raise exactly what the
queue's own methods do.

Items are followed by identity (``id(item)``) from ``put`` to ``get``: an item in a queue
is kept alive by it, so no other live object has its id. Both ends must go through a
proxy (one or several over the same queue) for ``pending_task``/``queue_wait_seconds``;
``queue_size`` is read from the queue itself and is right however items arrive.
``multiprocessing`` queues pickle items, so the object that comes out is a new one:
only ``queue_size`` is measured for them.
"""

from __future__ import annotations

import asyncio
import queue as queue_mod
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import wrapt

if TYPE_CHECKING:
    from .core import JobMetrics
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt < 2 has no generic ObjectProxy at runtime
    _Proxy = wrapt.ObjectProxy

from . import _errors
from .labels import UNKNOWN
from .state import TaskState

__all__ = ["AsyncQueueProxy", "ItemTracker", "QueueProxy", "instrument_queue"]

TypeOf = Callable[[Any], str]
Entry = Tuple[Optional[TaskState], float]


class ItemTracker:
    """Put times (and task series) of items in one queue, keyed by ``id(item)``.

    An id maps to one entry, or to a list of entries when the same object is in the
    queue several times (oldest first).
    """

    __slots__ = ("_entries", "_lock", "_observe", "_series_of")

    def __init__(
        self,
        series_of: Optional[Callable[[Any], Optional[TaskState]]],
        observe: Callable[[float, float], None],
    ) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[int, Any] = {}
        self._series_of = series_of
        self._observe = observe

    def put(self, item: Any) -> Optional[Entry]:
        """Record ``item`` entering; pending +1 for its type. Returns the entry."""
        try:
            series = None
            if self._series_of is not None:
                series = self._series_of(item)
                if series is not None:
                    series.add_pending(1)
            entry = (series, perf_counter())
            key = id(item)
            entries = self._entries
            with self._lock:
                found = entries.get(key)
                if found is None:
                    entries[key] = entry
                elif type(found) is list:
                    found.append(entry)
                else:
                    entries[key] = [found, entry]
            return entry
        except Exception as exc:
            _errors.report("queue put", exc)
            return None

    def undo(self, item: Any, entry: Optional[Entry]) -> None:
        """The put of ``item`` failed (full, cancelled): forget it."""
        if entry is None:
            return
        try:
            key = id(item)
            entries = self._entries
            with self._lock:
                found: Any = entries.get(key)
                if found is entry:
                    del entries[key]
                elif type(found) is list and any(e is entry for e in found):
                    rest = [e for e in found if e is not entry]
                    entries[key] = rest[0] if len(rest) == 1 else rest
                else:
                    return  # already taken by a consumer
            series = entry[0]
            if series is not None:
                series.add_pending(-1)
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("queue put", exc)

    def take(self, item: Any) -> Optional[TaskState]:
        """``item`` left the queue: record its wait; return its series (still pending)."""
        try:
            key = id(item)
            entries = self._entries
            with self._lock:
                found = entries.pop(key, None)
                if found is None:
                    return None  # put on the raw queue: nothing was counted
                if type(found) is list:
                    entry = found.pop(0)
                    entries[key] = found[0] if len(found) == 1 else found
                else:
                    entry = found
            now = perf_counter()
            self._observe(now - entry[1], now)
            return entry[0]  # type: ignore[no-any-return]
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("queue get", exc)
            return None

    def got(self, item: Any) -> None:
        """``item`` left the queue through a plain ``get``: it is no longer pending."""
        series = self.take(item)
        if series is not None:
            series.add_pending(-1)


class QueueProxy(_Proxy):
    """A ``queue.Queue``/``queue.SimpleQueue`` (or subclass) that reports its items."""

    def __init__(self, wrapped: Any, tracker: Optional[ItemTracker]) -> None:
        super().__init__(wrapped)
        self._self_tracker = tracker

    def put(self, item: Any, *args: Any, **kwargs: Any) -> Any:
        """``queue.put``; counts the item pending when it is accepted."""
        tracker = self._self_tracker
        if tracker is None:
            return self.__wrapped__.put(item, *args, **kwargs)
        entry = tracker.put(item)
        try:
            return self.__wrapped__.put(item, *args, **kwargs)
        except BaseException:
            tracker.undo(item, entry)
            raise

    def put_nowait(self, item: Any) -> Any:
        """``queue.put_nowait``; counts the item pending when it is accepted."""
        return self.put(item, False)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """``queue.get``; the item is no longer pending, its wait is recorded."""
        item = self.__wrapped__.get(*args, **kwargs)
        tracker = self._self_tracker
        if tracker is not None:
            tracker.got(item)
        return item

    def get_nowait(self) -> Any:
        """``queue.get_nowait``; as :meth:`get`."""
        return self.get(False)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A proxy is not sent to other processes; the queue itself may be.
        return self.__wrapped__.__reduce_ex__(protocol)


class AsyncQueueProxy(_Proxy):
    """An ``asyncio.Queue`` (or subclass) that reports its items."""

    def __init__(self, wrapped: Any, tracker: Optional[ItemTracker]) -> None:
        super().__init__(wrapped)
        self._self_tracker = tracker

    async def put(self, item: Any) -> None:
        """``await queue.put(item)``; counts the item pending when it is accepted."""
        tracker = self._self_tracker
        if tracker is None:
            return await self.__wrapped__.put(item)  # type: ignore[no-any-return]
        entry = tracker.put(item)
        try:
            await self.__wrapped__.put(item)
        except BaseException:  # a full queue's put can be cancelled
            tracker.undo(item, entry)
            raise

    def put_nowait(self, item: Any) -> None:
        """``queue.put_nowait``; counts the item pending when it is accepted."""
        tracker = self._self_tracker
        if tracker is None:
            return self.__wrapped__.put_nowait(item)  # type: ignore[no-any-return]
        entry = tracker.put(item)
        try:
            self.__wrapped__.put_nowait(item)
        except BaseException:
            tracker.undo(item, entry)
            raise

    async def get(self) -> Any:
        """``await queue.get()``; the item is no longer pending, its wait is recorded."""
        item = await self.__wrapped__.get()
        tracker = self._self_tracker
        if tracker is not None:
            tracker.got(item)
        return item

    def get_nowait(self) -> Any:
        """``queue.get_nowait``; as :meth:`get`."""
        item = self.__wrapped__.get_nowait()
        tracker = self._self_tracker
        if tracker is not None:
            tracker.got(item)
        return item

    async def _jobmetrics_take(self) -> Tuple[Any, Optional[TaskState]]:
        # For the worker pool: the item and its series, still counted pending, so the
        # worker can turn pending into running in one step.
        item = await self.__wrapped__.get()
        tracker = self._self_tracker
        return item, (tracker.take(item) if tracker is not None else None)


def _is_multiprocessing_queue(q: Any) -> bool:
    import multiprocessing.queues as mpq

    return isinstance(q, (mpq.Queue, mpq.SimpleQueue))


def _qsize(q: Any) -> int:
    return int(q.qsize())


def _mp_simple_size(q: Any) -> int:
    # multiprocessing.SimpleQueue has no qsize(); it can only say empty or not.
    return 0 if q.empty() else 1


def instrument_queue(
    metrics: JobMetrics, q: Any, name: str, type_of: Optional[TypeOf] = None,
) -> Any:
    """See :meth:`jobmetrics.JobMetrics.instrument_queue`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if type_of is not None and not callable(type_of):
        raise TypeError(f"type_of must be a callable item -> task type, got {type_of!r}")
    if isinstance(q, (QueueProxy, AsyncQueueProxy)):
        raise TypeError(f"queue {name!r} is already instrumented; pass the queue itself")
    is_async = isinstance(q, asyncio.Queue)
    is_mp = _is_multiprocessing_queue(q)
    if not (is_async or is_mp or isinstance(q, (queue_mod.Queue, queue_mod.SimpleQueue))):
        raise TypeError(
            "instrument_queue() takes a queue.Queue, queue.SimpleQueue, asyncio.Queue or "
            f"multiprocessing queue (or a subclass), got {type(q).__name__}"
        )
    if is_mp and type_of is not None:
        raise ValueError(
            "type_of is not supported for multiprocessing queues: items are pickled, so "
            "they cannot be followed from put to get; only queue_size is measured"
        )
    sizes, waits = metrics.queue_sizes, metrics.queue_waits
    if sizes is None or waits is None:  # metrics disabled
        return q
    name = sizes.names.admit(name)
    import multiprocessing.queues as mpq

    sizes.register(name, q, _mp_simple_size if isinstance(q, mpq.SimpleQueue) else _qsize)
    tracker: Optional[ItemTracker] = None
    if not is_mp:
        tracker = ItemTracker(_series_lookup(metrics, type_of),
                              waits.observer(name))
    if is_async:
        return AsyncQueueProxy(q, tracker)
    return QueueProxy(q, tracker)


def _series_lookup(
    metrics: JobMetrics, type_of: Optional[TypeOf]
) -> Optional[Callable[[Any], Optional[TaskState]]]:
    if type_of is None:
        return None
    cache: Dict[str, TaskState] = {}

    def series_of(item: Any) -> Optional[TaskState]:
        task_type = type_of(item)
        if not isinstance(task_type, str) or not task_type:
            _errors.report("queue type_of", TypeError(
                f"type_of() must return a non-empty str, got {task_type!r}; counted as "
                f"{UNKNOWN!r}"))
            task_type = UNKNOWN
        series = cache.get(task_type)
        if series is None:
            series = metrics.task_series(task_type)
            if series is not None:
                cache[task_type] = series
        return series

    return series_of
