"""Procrastinate: every job of a worker counted, with no decorator on each task.

>>> app = procrastinate.App(connector=procrastinate.PsycopgConnector())
>>> jobmetrics.procrastinate.instrument(app)

Procrastinate (3.10 and later) calls worker middlewares around every job it runs, on the
worker's event loop, for sync and async tasks alike, and lets the middleware see what
the job raised before the worker decides its fate. ``instrument()`` puts a
:class:`JobMetricsMiddleware` first in ``app.worker_defaults["worker_middleware"]`` (and
into an explicit ``worker_middleware=`` given to ``run_worker``/``run_worker_async``).
``type`` is the task's name. A job that returns is ``success``; one that raises is
``fail``, and also ``task_retries_total +1`` when the task's retry strategy retries it;
one aborted (``JobAborted``, or cancelled by ``cancel_job_by_id(..., abort=True)`` or by
the worker shutting down) is ``stop``. The wait from the time a job was due
(``scheduled_at``: deferred with ``schedule_at``/``schedule_in``, or a retry) to the
worker taking it goes to ``queue_wait_seconds{queue=<queue name>}``.

A release without worker middlewares (before 3.10) gets the fallback: when a worker
starts, the function of every registered task (registered by then, from
``import_paths`` too) is wrapped. It counts ``success``/``fail``/``stop`` but sees no job,
so neither retries nor queue waits.

The worker takes a job only when it has a free slot, so it holds no ``pending_task``;
the backlog in PostgreSQL is the exporter's job (``--url postgresql://...`` with the
``procrastinate`` layout).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional

from . import _errors
from .core import JobMetrics, resolve_metrics
from .serving import WorkerEndpoint
from .settings import serve_port
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run
from .tasks import status_of

__all__ = ["JobMetricsMiddleware", "instrument"]

_MARK = "_jobmetrics_procrastinate"
Observe = Callable[[float, float], None]
CallNext = Callable[[], Awaitable[Any]]

#: Set while a JobMetricsMiddleware records a job, so a second one in the same
#: worker's chain (instrument() and a hand-made list) passes it through: counted once.
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jobmetrics_procrastinate_recording", default=False)


class _Recorder:
    """The task states of one JobMetrics, and its queue-wait observers, made on first use."""

    def __init__(self, m: JobMetrics) -> None:
        self.m = m
        self._waits: Dict[str, Optional[Observe]] = {}
        self._lock = threading.Lock()

    def series(self, name: str) -> Optional[TaskState]:
        return self.m.task_series(name)

    def wait(self, queue: str) -> Optional[Observe]:
        try:
            return self._waits[queue]
        except KeyError:
            waits = self.m.queue_waits
            with self._lock:
                got = self._waits[queue] = (waits.observer(queue) if waits is not None
                                            else None)
            return got


class JobMetricsMiddleware:
    """A Procrastinate worker middleware counting every job the worker runs.

    ``instrument(app)`` installs one; to list middlewares by hand, put
    ``JobMetricsMiddleware(metrics)`` first in ``worker_middleware=[...]`` (the first is
    outermost, so it records the outcome the worker sees). ``metrics`` defaults to
    :func:`jobmetrics.default_metrics`.
    """

    def __init__(self, metrics: Optional[JobMetrics] = None) -> None:
        self._recorder = _Recorder(resolve_metrics(metrics))

    async def __call__(self, call_next: CallNext, context: Any, worker: Any) -> Any:
        """Run the job (``call_next()``) and record its run under its task's name."""
        if _recording.get():
            return await call_next()
        series: Optional[TaskState] = None
        task: Any = None
        try:
            job = context.job
            task = context.app.tasks.get(job.task_name)
            series = self._recorder.series(task.name if task is not None
                                           else job.task_name)
        except Exception as exc:
            _errors.report("procrastinate task type", exc)
        if series is None:
            return await call_next()
        start = series.begin()
        try:
            self._queue_wait(context, start)
        except Exception as exc:
            _errors.report("procrastinate queue wait", exc)
        run = OuterRun(series)
        token = outer_run.set(run)
        mark = _recording.set(True)
        try:
            result = await call_next()
        except asyncio.CancelledError:
            # An abort of an async job (user request or shutdown) cancels it.
            run.end(STOP, start)
            raise
        except BaseException as exc:
            status = STOP if _is_aborted(exc) else status_of(exc)
            run.end(status, start)
            if status == FAIL and _will_retry(task, exc, context):
                series.retried()
            raise
        else:
            run.end(SUCCESS, start)
            return result
        finally:
            _recording.reset(mark)
            outer_run.reset(token)

    def _queue_wait(self, context: Any, start: float) -> None:
        job = context.job
        due = job.scheduled_at
        if due is None:
            return  # deferred to run now: Procrastinate keeps its time in no job field
        observe = self._recorder.wait(str(job.queue))
        if observe is not None:
            observe(max(0.0, float(context.start_timestamp) - due.timestamp()), start)


def _is_aborted(exc: BaseException) -> bool:
    from procrastinate.exceptions import JobAborted

    return isinstance(exc, JobAborted)


def _will_retry(task: Any, exc: BaseException, context: Any) -> bool:
    # The worker asks the task's retry strategy the same question right after the
    # middleware chain returns (Procrastinate's strategies are pure functions of the
    # exception and the job's attempts).
    if task is None or getattr(task, "retry_strategy", None) is None:
        return False
    try:
        return task.get_retry_exception(exception=exc, job=context.job) is not None
    except Exception as err:
        _errors.report("procrastinate retry decision", err)
        return False


def _has_worker_middleware() -> bool:
    from procrastinate import worker

    return "worker_middleware" in inspect.signature(worker.Worker.__init__).parameters


# ---------------------------------------------------------------------------------
# The fallback, for releases without worker middlewares: wrap each task's function.


def _wrap_function(fn: Callable[..., Any], series: TaskState) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def arun(*args: Any, **kwargs: Any) -> Any:
            start = series.begin()
            run = OuterRun(series)
            token = outer_run.set(run)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                run.end(STOP if _is_aborted(exc) else status_of(exc), start)
                raise
            finally:
                outer_run.reset(token)
            run.end(SUCCESS, start)
            return result

        setattr(arun, _MARK, True)
        return arun

    @functools.wraps(fn)
    def run_(*args: Any, **kwargs: Any) -> Any:
        start = series.begin()
        run = OuterRun(series)
        token = outer_run.set(run)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            run.end(STOP if _is_aborted(exc) else status_of(exc), start)
            raise
        finally:
            outer_run.reset(token)
        run.end(SUCCESS, start)
        return result

    setattr(run_, _MARK, True)
    return run_


def _wrap_tasks(app: Any, recorder: _Recorder) -> None:
    for task in list(app.tasks.values()):
        fn = task.func
        if getattr(fn, _MARK, False):
            continue  # an alias of a task wrapped already, or a second worker start
        series = recorder.series(task.name)
        if series is not None:
            task.func = _wrap_function(fn, series)


# ---------------------------------------------------------------------------------


def instrument(app: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Any:
    """Count every job a worker of the Procrastinate ``app`` runs; returns ``app``.

    Call it where the app is defined (the module ``procrastinate --app=...`` imports),
    before a worker starts. ``metrics`` defaults to :func:`jobmetrics.default_metrics`.
    ``port`` (default ``$JOBMETRICS_PORT``; none: do not serve) serves ``/metrics``,
    on ``$JOBMETRICS_ADDR`` or the metrics' ``addr``, from when the first worker starts
    (``run_worker``, ``run_worker_async``, the ``procrastinate worker`` command) until
    the process exits. Calling it twice on one app raises ``ValueError``.
    """
    m = resolve_metrics(metrics)
    port = serve_port(port)
    from procrastinate import App

    if not isinstance(app, App):
        raise TypeError(f"app must be a procrastinate.App, got {type(app).__name__}")
    a: Any = app  # procrastinate's own types for worker_defaults are a TypedDict
    if getattr(a, _MARK, False):
        raise ValueError("this procrastinate.App is instrumented already: call "
                         "instrument() once")
    setattr(a, _MARK, True)
    if _has_worker_middleware():
        made = JobMetricsMiddleware(m)
        mw: Optional[JobMetricsMiddleware] = made
        recorder = made._recorder
        defaults = dict(a.worker_defaults)
        defaults["worker_middleware"] = [mw, *(defaults.get("worker_middleware") or [])]
        a.worker_defaults = defaults
    else:
        mw = None
        recorder = _Recorder(m)
    a.run_worker_async = _starting(a, a.run_worker_async, m, port, mw, recorder)
    return a


def _starting(app: Any, run_worker_async: Callable[..., Awaitable[None]], m: JobMetrics,
              port: Optional[int], mw: Optional[JobMetricsMiddleware],
              recorder: _Recorder) -> Callable[..., Awaitable[None]]:
    endpoint = WorkerEndpoint(m, port)
    tried: List[bool] = []

    @functools.wraps(run_worker_async)
    async def run(**kwargs: Any) -> None:
        if not tried:  # the first worker start serves; a failure is not tried again
            tried.append(endpoint.serve("procrastinate metrics endpoint"))
        if mw is not None:
            given = kwargs.get("worker_middleware")
            if given is not None and mw not in given:
                # An explicit list replaces worker_defaults' one: ours goes first again.
                kwargs["worker_middleware"] = [mw, *given]
        else:
            try:
                app.perform_import_paths()  # as the worker does next: tasks of import_paths
            except Exception as exc:
                _errors.report("procrastinate import paths", exc)
            try:
                _wrap_tasks(app, recorder)
            except Exception as exc:
                _errors.report("procrastinate task wrapping", exc)
        await run_worker_async(**kwargs)

    return run
