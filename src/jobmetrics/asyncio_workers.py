"""A pool of asyncio workers whose items are tasks, exact under cancellation.

>>> pool = m.worker_pool(m.instrument_queue(asyncio.Queue(), name="jobs",
...                                         type_of=lambda job: job.kind),
...                      handle, workers=4)
>>> async with pool:          # starts the workers; stops (cancels) them on exit
...     await pool.queue.join()

Each item a worker takes is one task: when the queue was instrumented with ``type_of``,
of the item's type, and pending turns to running in one step (no ``await`` between
taking the item and counting it running, so cancellation cannot split them); otherwise
of the pool's ``type`` (default: the handler's ``@m.task`` type or name). A handler that
returns is ``success``, raises ``fail`` (the worker logs one line, the traceback at DEBUG,
or calls ``on_error``, and goes on), raises :class:`~jobmetrics.Stopped` or is cancelled
``stop`` (not logged). A handler's own ``CancelledError`` (not a cancellation of the
worker; Python 3.11+ tells them apart) is ``stop``, logged, and the worker goes on; a
handler's ``SystemExit``/``KeyboardInterrupt`` is ``stop`` and stops the loop as it would
without the pool. ``queue.task_done()`` is called for every item taken,
so ``await queue.join()`` works.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Type

from .executors import task_type_of
from .settings import check_int, check_str
from .state import STOP, SUCCESS, OuterRun, TaskState, outer_run
from .tasks import Stopped, status_of

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """``workers`` asyncio tasks running ``handler(item)`` for items of ``queue``.

    Build it with :meth:`jobmetrics.JobMetrics.worker_pool`. Use ``async with pool:``
    or :meth:`start` and :meth:`stop` from inside a running event loop.
    """

    def __init__(
        self,
        metrics: JobMetrics,
        queue: Any,
        handler: Callable[[Any], Any],
        workers: int = 1,
        type: Optional[str] = None,
        on_error: Optional[Callable[[Any, BaseException], None]] = None,
    ) -> None:
        if not isinstance(queue, asyncio.Queue):
            raise TypeError(f"queue must be an asyncio.Queue, got {queue!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        check_int("workers", workers, 1)
        if type is not None:
            check_str("type", type, allow_empty=False)
        self.queue = queue
        self.workers = workers
        self._on_error = on_error
        self._tasks: List[asyncio.Task[None]] = []
        self._series: Optional[TaskState] = None
        self._type = type or task_type_of(handler)
        self._call = handler
        self._metrics = metrics

    @property
    def running(self) -> bool:
        """Whether the workers have been started and not stopped."""
        return bool(self._tasks)

    def start(self) -> WorkerPool:
        """Start the workers on the running event loop."""
        if self._tasks:
            raise RuntimeError("the worker pool is already started")
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self.workers)]
        return self

    async def stop(self) -> None:
        """Cancel the workers and wait for them; a handler cut short counts as ``stop``."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> WorkerPool:
        return self.start()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()

    async def _work(self) -> None:
        queue = self.queue
        take = getattr(queue, "_jobmetrics_take", None)
        call = self._call
        while True:
            if take is not None:
                item, series = await take()
            else:
                item, series = await queue.get(), None
            # No await from here to begin(): a cancellation cannot fall in between.
            start = 0.0
            run: Optional[OuterRun] = None
            if series is not None:
                start = series.begin_from_pending()
            elif self._metrics.enabled:
                # Created on first use: a pool over a typed queue never needs it.
                if self._series is None:
                    self._series = self._metrics.task_series(self._type)
                series = self._series
                if series is not None:
                    start = series.begin()
            if series is not None:
                # A @m.task handler takes the run over: each item counted once.
                run = OuterRun(series)
                token = outer_run.set(run)
            try:
                result = call(item)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError as exc:
                if run is not None:
                    run.end(STOP, start)
                if _worker_cancelled():
                    raise  # stop(), or the loop shutting down: let it through
                # The handler's own CancelledError (a cancelled inner task it awaited):
                # the job stopped, the worker goes on so the pool stays at size.
                self._report(item, exc)
            except Exception as exc:
                if run is not None:
                    run.end(status_of(exc), start)
                self._report(item, exc)
            except BaseException:
                # SystemExit, KeyboardInterrupt: counted (running goes back down), then
                # let through, since it is the process stopping.
                if run is not None:
                    run.end(STOP, start)
                raise
            else:
                if run is not None:
                    run.end(SUCCESS, start)
            finally:
                if run is not None:
                    outer_run.reset(token)
                queue.task_done()

    def _report(self, item: Any, exc: BaseException) -> None:
        if self._on_error is None:
            if isinstance(exc, Stopped):
                return  # a job ending as asked, not an error
            # One line per failed job: a failing dependency must not flood the log with
            # tracebacks. The traceback is there at DEBUG.
            log.error("jobmetrics worker: handler failed on %s: %s", _short(item),
                      _short(exc, exception=True))
            log.debug("jobmetrics worker: traceback of the failure on %s", _short(item),
                      exc_info=exc)
            return
        try:
            self._on_error(item, exc)
        except Exception:
            log.exception("jobmetrics worker: on_error failed")


def _worker_cancelled() -> bool:
    """Whether the running worker task itself was cancelled (not only its handler).

    ``Task.cancelling()`` tells from Python 3.11 on; before it there is no way to tell a
    handler's own ``CancelledError`` from a cancellation of the worker, so every one is
    taken as the worker's (the worker stops, as it always did).
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


def _short(value: object, exception: bool = False, limit: int = 200) -> str:
    # One line, bounded: an item's repr or an exception's message may be long or multi-line.
    try:
        text = repr(value) if not exception else f"{type(value).__name__}: {value}"
    except Exception:
        text = f"<{type(value).__name__}>"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."
