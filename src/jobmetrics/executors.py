"""``concurrent.futures`` executors whose work items are tasks.

``m.instrument_executor(ex)`` returns a ``wrapt.ObjectProxy`` over ``ex`` (so
``isinstance`` holds and every other attribute is the executor's) whose ``submit`` and
``map`` make each call a task: ``pending_task`` from submit until it starts, then
``running_task``, then ``task_total``/``task_process_time_seconds`` with its status.

What is measured where:

* **Thread pools** (``ThreadPoolExecutor`` and subclasses): the callable is wrapped, so
  pending turns to running in the worker thread right before the call, and the status
  and run time are those of the call itself, exactly as ``@m.task`` measures them.
* **Process pools and any other executor**: the call runs in another process, so the
  parent measures the *future*: pending from ``submit`` until the executor marks the
  future running, then running until the future is done. A ``ProcessPoolExecutor`` marks
  a future running when its manager thread moves the item to the call queue, which holds
  up to ``max_workers + 1`` items: so an item can count as running (and its run time
  include) a short wait in that queue before a child process picks it up. If the future
  turned running before jobmetrics could see it (a rare race with the manager thread) or
  never ran (a broken pool), its time is measured from ``submit``.

A future cancelled before it starts leaves no pending count and no finished count.
A callable decorated with ``@m.task`` gives its type, and any ``@m.task`` function the
call runs in a thread pool takes the run over, so one work item is counted once, by the
innermost type (pending shows the submitted callable's type until the run starts). A
decorated function cannot be pickled, so process pools do not see one.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures._base import PENDING, RUNNING
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional, Type

import wrapt

if TYPE_CHECKING:
    from .core import JobMetrics
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt < 2 has no generic ObjectProxy at runtime
    _Proxy = wrapt.ObjectProxy

from . import _errors
from .settings import check_str
from .state import SUCCESS, OuterRun, TaskState
from .tasks import call_as_outer, state_of, status_of

__all__ = ["ExecutorProxy", "instrument_executor", "task_type_of"]

_PLANS = 256


def task_type_of(fn: Any) -> str:
    """The task type a submitted callable counts under: its ``@m.task`` type, else its
    name (``functools.partial`` is looked through), else its class name."""
    state = state_of(fn)
    if state is not None:
        return state.type
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


class _LocalRun:
    """The callable a thread pool runs instead of ``fn``: pending -> running -> done."""

    __slots__ = ("call", "series", "started")

    def __init__(self, series: TaskState, call: Callable[..., Any]) -> None:
        self.series = series
        self.call = call
        self.started = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started = True
        start = self.series.begin_from_pending()
        return call_as_outer(OuterRun(self.series), start, self.call, *args, **kwargs)

    def done(self, future: Future[Any]) -> None:
        # Runs after the call for a future that ran; only a cancelled (or never run)
        # future gets here with started False.
        if not self.started:
            self.series.add_pending(-1)


class _RemoteRun:
    """Follows a future whose call runs elsewhere: pending until the executor marks it
    running, running until it is done."""

    __slots__ = ("series", "start", "started", "submitted")

    def __init__(self, series: TaskState) -> None:
        self.series = series
        self.submitted = perf_counter()
        self.started = False
        self.start = 0.0

    def running(self) -> None:
        self.started = True
        self.start = self.series.begin_from_pending()

    def hook(self, future: Future[Any]) -> None:
        try:
            with future._condition:
                state = future._state
                if state == PENDING:
                    original = future.set_running_or_notify_cancel

                    def set_running_or_notify_cancel() -> bool:
                        ok = original()
                        if ok:
                            self.running()
                        return ok

                    future.set_running_or_notify_cancel = (  # type: ignore[method-assign]
                        set_running_or_notify_cancel
                    )
                elif state == RUNNING:
                    self.running()
        except Exception as exc:  # pragma: no cover - a stdlib without these internals
            _errors.report("executor future", exc)
        future.add_done_callback(self.done)

    def done(self, future: Future[Any]) -> None:
        try:
            series = self.series
            if future.cancelled() and not self.started:
                series.add_pending(-1)
                return
            if not self.started:
                series.begin_from_pending()
                start = self.submitted
            else:
                start = self.start
            exc = future.exception()
            series.end(SUCCESS if exc is None else status_of(exc), start)
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("executor future", exc)


class ExecutorProxy(_Proxy):
    """An executor whose ``submit``/``map`` calls are tasks (see the module doc)."""

    def __init__(self, wrapped: Executor, metrics: JobMetrics, task_type: Optional[str]) -> None:
        super().__init__(wrapped)
        self._self_metrics = metrics
        self._self_type = task_type
        self._self_local = isinstance(wrapped, ThreadPoolExecutor)
        # fn -> its task state: most services submit a few functions many times.
        # Bounded, so submitting fresh partials or lambdas cannot grow it.
        self._self_plans: Dict[Any, TaskState] = {}

    def _self_plan(self, fn: Any) -> TaskState:
        try:
            return self._self_plans[fn]
        except (KeyError, TypeError):  # not seen yet, or unhashable
            pass
        state = self._self_metrics.task_series(self._self_type or task_type_of(fn))
        assert state is not None  # the proxy exists only when metrics are enabled
        plans = self._self_plans
        if len(plans) >= _PLANS:
            plans.clear()
        try:
            plans[fn] = state
        except TypeError:
            pass
        return state

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """``executor.submit``: the call is pending now, running when it starts."""
        try:
            series = self._self_plan(fn)
        except Exception as exc:
            _errors.report("executor submit", exc)
            return self.__wrapped__.submit(fn, *args, **kwargs)  # type: ignore[no-any-return]
        series.add_pending(1)
        if self._self_local:
            run = _LocalRun(series, fn)
            try:
                future: Future[Any] = self.__wrapped__.submit(run, *args, **kwargs)
            except BaseException:
                series.add_pending(-1)
                raise
            future.add_done_callback(run.done)
            return future
        remote = _RemoteRun(series)
        try:
            future = self.__wrapped__.submit(fn, *args, **kwargs)
        except BaseException:
            series.add_pending(-1)
            raise
        remote.hook(future)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1, **kwargs: Any) -> Iterator[Any]:
        """``executor.map``: each item is one submitted task (``chunksize`` is not used:
        a process pool sends items one by one, with the same results)."""
        executor: Any = self  # Executor.map only calls self.submit: ours
        return Executor.map(executor, fn, *iterables, timeout=timeout, **kwargs)

    def __enter__(self) -> ExecutorProxy:
        # Executor.__enter__ returns the raw executor; keep the instrumented one.
        self.__wrapped__.__enter__()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Any:
        return self.__wrapped__.__exit__(exc_type, exc, tb)


def instrument_executor(metrics: JobMetrics, ex: Any, task_type: Optional[str] = None) -> Any:
    """See :meth:`jobmetrics.JobMetrics.instrument_executor`."""
    if not isinstance(ex, Executor):
        raise TypeError(
            f"instrument_executor() takes a concurrent.futures Executor, got {type(ex).__name__}"
        )
    if isinstance(ex, ExecutorProxy):
        raise TypeError("this executor is already instrumented; pass the executor itself")
    if task_type is not None:
        check_str("type", task_type, allow_empty=False)
    if not metrics.enabled:
        return ex
    return ExecutorProxy(ex, metrics, task_type)
