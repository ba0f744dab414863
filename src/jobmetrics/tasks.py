"""Task instrumentation: the ``@task`` decorator and the ``track_task`` context manager.

Both record into a :class:`~jobmetrics.state.TaskState`: one lock round trip to start a
task and one to finish it, however many families that updates.
"""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type

import wrapt

if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper[..., Any]
else:  # wrapt < 2 has no generic wrappers at runtime
    _FunctionWrapper = wrapt.FunctionWrapper
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper

from .state import FAIL, STATUSES, STOP, SUCCESS, OuterRun, TaskState, outer_run

__all__ = ["STATUSES", "BoundTaskFunction", "Stopped", "TaskFunction", "TaskHandle",
           "call_as_outer", "instrument", "state_of", "status_of"]


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


def call_as_outer(run: OuterRun, start: float, call: Callable[..., Any],
                  *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` as an outer layer's run begun at ``start`` (executors,
    schedulers, framework integrations): a ``@m.task`` function inside takes it over,
    else it ends with the call's status. Results and exceptions pass through."""
    token = outer_run.set(run)
    try:
        result = call(*args, **kwargs)
    except BaseException as exc:
        run.end(status_of(exc), start)
        raise
    finally:
        outer_run.reset(token)
    run.end(SUCCESS, start)
    return result


class TaskHandle:
    """What ``track_task`` returns: a ``with``/``async with`` block timing one task.

    Inside the block, :meth:`mark_stopped` ends the task with ``status="stop"`` without
    raising. A handle times one block at a time; call ``track_task`` again for another.
    """

    __slots__ = ("_series", "_start", "_stopped")

    def __init__(self, series: Optional[TaskState]) -> None:
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
        self._stopped = False
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
# state methods so a call does no lookups. A call inside an outer layer's run (a worker
# pool, an executor) takes that run over: one unit of work, counted once, by its
# innermost type.

Wrapper = Callable[[Any, Any, Tuple[Any, ...], Dict[str, Any]], Any]
_outer = outer_run.get


def _sync_wrapper(state: TaskState) -> Wrapper:
    begin, end = state.begin, state.end

    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        outer = _outer()
        if outer is not None:
            outer.claim()
        start = begin()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    return wrapper


def _async_wrapper(state: TaskState) -> Wrapper:
    begin, end = state.begin, state.end

    async def run(coro: Any) -> Any:
        outer = _outer()
        if outer is not None:
            outer.claim()
        start = begin()
        try:
            result = await coro
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    # The call makes the coroutine at once, so wrong arguments raise at the call, as
    # without the decorator; the task starts when it is first awaited.
    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        return run(wrapped(*args, **kwargs))

    return wrapper


def _generator_wrapper(state: TaskState) -> Wrapper:
    begin, end = state.begin, state.end

    # The task runs from the first next() to exhaustion; closing early is a stop.
    def run(gen: Any) -> Any:
        outer = _outer()
        if outer is not None:
            outer.claim()
        start = begin()
        try:
            result = yield from gen
        except BaseException as exc:
            end(status_of(exc), start)
            raise
        end(SUCCESS, start)
        return result

    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        return run(wrapped(*args, **kwargs))

    return wrapper


def _async_generator_wrapper(state: TaskState) -> Wrapper:
    begin, end = state.begin, state.end

    async def run(inner: Any) -> Any:
        outer = _outer()
        if outer is not None:
            outer.claim()
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

    def wrapper(wrapped: Any, instance: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        return run(wrapped(*args, **kwargs))

    return wrapper


def underlying_function(func: Any) -> Any:
    """The plain function behind a ``classmethod``/``staticmethod`` object."""
    return getattr(func, "__func__", func) if isinstance(func, (classmethod, staticmethod)) \
        else func


class BoundTaskFunction(_BoundFunctionWrapper):
    """A :class:`TaskFunction` bound to an instance or class (a method call)."""

    @property
    def jobmetrics_state(self) -> TaskState:
        """The task type's state this method records into."""
        state: TaskState = self._self_parent.jobmetrics_state
        return state


class TaskFunction(_FunctionWrapper):
    """A function decorated with ``@m.task``: every call is a task of
    :attr:`jobmetrics_state` (kind-preserving, as wrapt's wrappers are)."""

    __bound_function_wrapper__ = BoundTaskFunction

    def __init__(self, wrapped: Any, state: TaskState) -> None:
        plain = underlying_function(wrapped)
        if inspect.isasyncgenfunction(plain):
            make = _async_generator_wrapper
        elif inspect.iscoroutinefunction(plain):
            make = _async_wrapper
        elif inspect.isgeneratorfunction(plain):
            make = _generator_wrapper
        else:
            make = _sync_wrapper
        super().__init__(wrapped, make(state))
        self._self_state = state

    @property
    def jobmetrics_state(self) -> TaskState:
        """The task type's state this function records into."""
        return self._self_state


def instrument(func: Any, state: TaskState) -> Any:
    """Wrap ``func`` so every call is a task of ``state``."""
    return TaskFunction(func, state)


def state_of(func: Any) -> Optional[TaskState]:
    """The state of a callable decorated by ``@m.task`` (or a bound method of one)."""
    if isinstance(func, (TaskFunction, BoundTaskFunction)):
        state: TaskState = func.jobmetrics_state
        return state
    return None
