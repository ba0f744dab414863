"""arq: every job function of a worker counted, with no decorator on each.

>>> class WorkerSettings:
...     functions = [send_mail, func(resize, name="resize", max_tries=3)]
>>> jobmetrics.arq.instrument(WorkerSettings)

arq's hooks (``on_job_start``/``on_job_end``) see neither the function nor the outcome,
so each entry of ``functions`` (and ``cron_jobs``) is replaced by a copy whose coroutine
records around the original. ``type`` is the name arq uses (``func(name=...)``, else the
coroutine's ``__qualname__``; ``cron:<name>`` for cron jobs). A job that returns is
``success``; one that raises is ``fail``; ``arq.Retry`` is ``fail`` and
``task_retries_total +1`` (when the worker retries jobs, as by default); a job cancelled
by ``Job.abort()`` or by the worker shutting down is ``stop``; a job cancelled at its
timeout is ``fail``, as arq records it (a ``TimeoutError``). The wait from the time the
job became due (its score) to its start goes to ``queue_wait_seconds{queue=<queue name>}``.

The worker holds no jobs besides those it runs (it takes what it starts), so it reports
no ``pending_task``; the backlog in Redis (``arq:queue``) is the exporter's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from arq.worker import Function, Retry, func

from . import _errors
from .core import JobMetrics, resolve_metrics
from .serving import WorkerEndpoint
from .settings import serve_port
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run
from .tasks import status_of

__all__ = ["instrument"]

_MARK = "_jobmetrics_arq"
_DEFAULT_TIMEOUT = 300.0  # arq's Worker(job_timeout=300)
# asyncio runs a timer up to one clock resolution early (15.6 ms on Windows).
_EARLY = time.get_clock_info("monotonic").resolution


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _wrap(coroutine: Callable[..., Awaitable[Any]], series: TaskState,
          wait: Callable[[float, float], None], timeout_s: float,
          retries: bool) -> Callable[..., Awaitable[Any]]:
    # A plain function returning the coroutine: arq calls it synchronously right before
    # its wait_for(timeout), so the clock read here is never later than the timeout's.
    def call(ctx: Dict[Any, Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        called = time.monotonic()
        return _run(ctx, args, kwargs, called)

    async def _run(ctx: Dict[Any, Any], args: Tuple[Any, ...], kwargs: Dict[str, Any],
                   called: float) -> Any:
        start = series.begin()
        try:
            score = ctx.get("score")
            if isinstance(score, (int, float)):
                wait(max(0.0, time.time() - score / 1000.0), start)
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("arq queue wait", exc)
        run = OuterRun(series)
        token = outer_run.set(run)
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except Retry:
            run.end(FAIL, start)
            if retries:
                series.retried()
            raise
        except asyncio.CancelledError:
            # An abort, a shutdown and a timeout all cancel the job; only the timeout
            # comes once the job's whole timeout has passed.
            timed_out = time.monotonic() - called >= timeout_s - _EARLY
            run.end(FAIL if timed_out else STOP, start)
            raise
        except BaseException as exc:
            run.end(status_of(exc), start)
            raise
        else:
            run.end(SUCCESS, start)
            return result
        finally:
            outer_run.reset(token)

    setattr(call, _MARK, True)
    call.__qualname__ = getattr(coroutine, "__qualname__", "job")
    return call


def _instrument_entries(entries: List[Any], m: JobMetrics, queue: str, timeout: float,
                        retries: bool) -> List[Any]:
    out: List[Any] = []
    waits = m.queue_waits
    wait = waits.observer(queue) if waits is not None else None
    for entry in entries:
        is_cron = hasattr(entry, "next_run") and not isinstance(entry, Function)
        f = entry if is_cron else func(entry)
        if getattr(f.coroutine, _MARK, False):
            raise ValueError(f"arq function {f.name!r} is instrumented already: "
                             "call instrument() once")
        series = m.task_series(f.name)
        if series is None or wait is None:
            out.append(f)
            continue
        t = _seconds(f.timeout_s, timeout)
        out.append(dataclasses.replace(f, coroutine=_wrap(f.coroutine, series, wait, t,
                                                          retries)))
    return out


def instrument(target: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Any:
    """Instrument every job function of an arq worker; returns ``target``.

    ``target`` is a ``WorkerSettings`` class (or the dict ``arq.run_worker`` also takes)
    before the worker is created, or an ``arq.worker.Worker``. ``metrics`` defaults to
    :func:`jobmetrics.default_metrics`. ``port`` (default ``$JOBMETRICS_PORT``; none:
    do not serve) serves ``/metrics`` from the worker as it starts (``on_startup``), on
    ``$JOBMETRICS_ADDR`` or the metrics' ``addr``.
    """
    metrics = resolve_metrics(metrics)
    port = serve_port(port)
    from arq.worker import Worker

    m = metrics
    if isinstance(target, Worker):
        entries = list(target.functions.values())
        new = _instrument_entries(entries, m, target.queue_name, target.job_timeout_s,
                                  target.retry_jobs)
        target.functions = {f.name: f for f in new}
        if port is not None:
            target.on_startup = _serving(target.on_startup, m, port)  # type: ignore[assignment]
        return target
    if isinstance(target, dict):
        get: Callable[[str, Any], Any] = target.get
        put: Callable[[str, Any], None] = target.__setitem__
    elif isinstance(target, type):
        def get(name: str, default: Any) -> Any:
            return target.__dict__.get(name, default)  # as arq's get_kwargs reads it

        def put(name: str, value: Any) -> None:
            setattr(target, name, value)
    else:
        raise TypeError("target must be an arq WorkerSettings class, a settings dict or an "
                        f"arq.worker.Worker, got {type(target).__name__}")
    queue = get("queue_name", None) or "arq:queue"
    timeout = _seconds(get("job_timeout", None), _DEFAULT_TIMEOUT)
    retries = bool(get("retry_jobs", True))
    functions = get("functions", ())
    cron = get("cron_jobs", None)
    if not functions and not cron:
        raise ValueError("target has no functions or cron_jobs to instrument")
    put("functions", _instrument_entries(list(functions), m, str(queue), timeout, retries))
    if cron:
        put("cron_jobs", _instrument_entries(list(cron), m, str(queue), timeout, retries))
    if port is not None:
        put("on_startup", _serving(get("on_startup", None), m, port))
    return target


StartupHook = Callable[[Dict[Any, Any]], Awaitable[Any]]


def _serving(hook: Optional[StartupHook], m: JobMetrics, port: int) -> StartupHook:
    endpoint = WorkerEndpoint(m, port)

    async def on_startup(ctx: Dict[Any, Any]) -> None:
        if endpoint.serve("arq metrics endpoint"):
            ctx["jobmetrics_server"] = endpoint.server
        if hook is not None:
            await hook(ctx)

    return on_startup
