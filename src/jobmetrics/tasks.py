"""Task instrumentation: the ``@task`` decorator and the ``track_task`` context manager.

Every task type has one :class:`TaskSeries` holding its running and pending counts,
finished counts and durations per status, and its success-rate window, behind a single
lock: a finished call costs one lock round trip however many families it updates.
"""

from __future__ import annotations

import inspect
import threading
from time import perf_counter
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, Type

import wrapt

from . import _errors
from .durations import DurationSeries, new_duration
from .settings import Settings
from .window import SlidingRatio

__all__ = ["STATUSES", "Stopped", "TaskHandle", "TaskRecorder", "TaskSeries"]

SUCCESS, FAIL, STOP = 0, 1, 2
#: Values of the ``status`` label, indexed by the constants above.
STATUSES: Tuple[str, str, str] = ("success", "fail", "stop")


class Stopped(Exception):
    """Raise (or subclass) this in a task to end it with ``status="stop"``.

    The exception still propagates to the caller unchanged; it only tells jobmetrics
    that the task was stopped on purpose rather than failed. Cancellation
    (``asyncio.CancelledError``) and other ``BaseException`` exits that are not
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, a generator closed early)
    count as ``stop`` too.
    """


def status_of(exc: BaseException) -> int:
    """The status index an exception ends a task with."""
    if isinstance(exc, Exception) and not isinstance(exc, Stopped):
        return FAIL
    return STOP


class TaskRecorder(Protocol):
    """What instrumentation needs of a task type's state (in-process or multi-process)."""

    type: str

    def begin(self) -> float:
        """Mark one task running; return its start time (``perf_counter``)."""

    def end(self, status: int, start: float) -> None:
        """Mark the task that began at ``start`` finished with ``status``."""

    def add_pending(self, n: int) -> None:
        """Change the pending count by ``n``."""

    def begin_from_pending(self) -> float:
        """A pending task starts: pending -1, running +1."""


class TaskSeries:
    """All state of one task type. Thread-safe; used by every instrumentation."""

    __slots__ = ("_lock", "_settings", "counts", "durations", "pending", "ratio", "running",
                 "type")

    def __init__(self, task_type: str, settings: Settings) -> None:
        now = perf_counter()
        self.type = task_type
        self._settings = settings
        self._lock = threading.Lock()
        self.running = 0
        self.pending = 0
        self.counts: List[int] = [0, 0, 0]
        self.durations: List[DurationSeries] = [
            new_duration(settings, settings.task_duration, now) for _ in STATUSES
        ]
        self.ratio = SlidingRatio(settings.success_rate_window, settings.age_buckets, now)

    def begin(self) -> float:
        """Mark one task running; return its start time (``perf_counter``)."""
        try:
            with self._lock:
                self.running += 1
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("task begin", exc)
        return perf_counter()

    def end(self, status: int, start: float) -> None:
        """Mark the task that began at ``start`` finished with ``status``."""
        now = perf_counter()
        try:
            with self._lock:
                self.running -= 1
                self.counts[status] += 1
                self.durations[status].observe(now - start, now)
                if status != STOP:
                    self.ratio.add(status == SUCCESS, now)
        except Exception as exc:
            _errors.report("task end", exc)

    def add_pending(self, n: int) -> None:
        """Change the pending count by ``n`` (accepted but not started)."""
        try:
            with self._lock:
                self.pending += n
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("task pending", exc)

    def begin_from_pending(self) -> float:
        """A pending task starts: pending -1, running +1 in one step."""
        try:
            with self._lock:
                self.pending -= 1
                self.running += 1
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("task begin", exc)
        return perf_counter()

    def snapshot(self, now: float) -> Tuple[int, int, List[int], float]:
        """``(running, pending, counts, success_rate)`` read under the lock."""
        with self._lock:
            return self.running, self.pending, list(self.counts), self.ratio.ratio(now)

    def lock(self) -> threading.Lock:
        """The lock to hold while reading :attr:`durations`."""
        return self._lock


class TaskHandle:
    """What ``track_task`` returns: a ``with``/``async with`` block timing one task.

    Inside the block, :meth:`mark_stopped` ends the task with ``status="stop"`` without
    raising. A handle times one block at a time; call ``track_task`` again for another.
    """

    __slots__ = ("_series", "_start", "_stopped")

    def __init__(self, series: Optional[TaskRecorder]) -> None:
        self._series = series
        self._start = 0.0
        self._stopped = False

    @property
    def type(self) -> Optional[str]:
        """The task type (``None`` when metrics are disabled)."""
        return self._series.type if self._series is not None else None

    def mark_stopped(self) -> None:
        """End this task as ``stop`` (stopped on purpose) instead of ``success``."""
        self._stopped = True

    def __enter__(self) -> TaskHandle:
        if self._series is not None:
            self._start = self._series.begin()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        series = self._series
        if series is None:
            return
        if self._stopped:
            status = STOP
        elif exc is None:
            status = SUCCESS
        else:
            status = status_of(exc)
        series.end(status, self._start)

    async def __aenter__(self) -> TaskHandle:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.__exit__(exc_type, exc, tb)


# ---------------------------------------------------------------------------
# The decorator. One wrapper per kind of callable, each a closure over the bound
# series methods so a call does no lookups.

Wrapper = Callable[[Any, Any, Tuple[Any, ...], Dict[str, Any]], Any]


def _sync_wrapper(series: TaskRecorder) -> Wrapper:
    begin, end = series.begin, series.end

    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        start = begin()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    return wrapper


def _calling(run: Callable[[Any, Tuple[Any, ...], Dict[str, Any]], Any]) -> Wrapper:
    # For the kinds whose bookkeeping lives in a coroutine or generator of its own:
    # the call only creates it; the task starts when it is first resumed.
    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        return run(wrapped, args, kwargs)

    return wrapper


def _async_wrapper(series: TaskRecorder) -> Wrapper:
    begin, end = series.begin, series.end

    async def run(wrapped: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        start = begin()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    return _calling(run)


def _generator_wrapper(series: TaskRecorder) -> Wrapper:
    begin, end = series.begin, series.end

    # The task runs from the first next() to exhaustion; closing early is a stop.
    def run(wrapped: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        start = begin()
        try:
            result = yield from wrapped(*args, **kwargs)
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    return _calling(run)


def _async_generator_wrapper(series: TaskRecorder) -> Wrapper:
    begin, end = series.begin, series.end

    async def run(wrapped: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        inner = wrapped(*args, **kwargs)
        start = begin()
        try:
            # ``yield from`` does not exist for async generators: forward asend,
            # athrow and aclose by hand so the wrapped generator sees what its
            # consumer does.
            step: Callable[[Any], Any] = inner.asend
            arg: Any = None
            while True:
                try:
                    item = await step(arg)
                except StopAsyncIteration:
                    break
                try:
                    arg = yield item
                    step = inner.asend
                except GeneratorExit:
                    await inner.aclose()
                    raise
                except BaseException as exc:
                    step, arg = inner.athrow, exc
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)

    return _calling(run)


def underlying_function(func: Any) -> Any:
    """The plain function behind a ``classmethod``/``staticmethod`` object."""
    return getattr(func, "__func__", func) if isinstance(func, (classmethod, staticmethod)) \
        else func


def instrument(func: Any, series: TaskRecorder) -> Any:
    """Wrap ``func`` so every call is a task of ``series``; kind-preserving (wrapt)."""
    plain = underlying_function(func)
    if inspect.isasyncgenfunction(plain):
        make = _async_generator_wrapper
    elif inspect.iscoroutinefunction(plain):
        make = _async_wrapper
    elif inspect.isgeneratorfunction(plain):
        make = _generator_wrapper
    else:
        make = _sync_wrapper
    wrapper = wrapt.FunctionWrapper(func, make(series))
    # Lets executors and worker pools find the type and avoid counting a call twice.
    wrapper._self_jobmetrics_series = series  # type: ignore[attr-defined]
    return wrapper


def series_of(func: Any) -> Optional[TaskRecorder]:
    """The task series of a callable decorated by ``@m.task``, else ``None``."""
    series = getattr(func, "_self_jobmetrics_series", None)
    if series is None:  # a bound method of a decorated one (wrapt keeps its parent)
        series = getattr(getattr(func, "_self_parent", None), "_self_jobmetrics_series", None)
    return series if hasattr(series, "begin_from_pending") else None
