"""APScheduler 3.x: every run of every job counted, with no decorator on each.

>>> scheduler = BackgroundScheduler()
>>> jobmetrics.apscheduler.instrument(scheduler)

``type`` is the job's ``name`` (by default the function's name; job ids are often UUIDs,
so they are not labels). A run that returns is ``success``, one that raises ``fail``; a
run time missed past ``misfire_grace_time`` (``EVENT_JOB_MISSED``) or skipped because
``max_instances`` runs were going (``EVENT_JOB_MAX_INSTANCES``) is ``stop`` with a 0 s
duration. A submitted run is ``pending_task`` until it starts.

Where a run starts: APScheduler's listeners fire when the scheduler *submits* a job and
when the executor *completes* all its run times, not when the function starts in the
executor's thread or task. So each executor's ``_do_submit_job`` is wrapped (per
instance, as executors are added): it hands ``run_job`` a view of the job whose ``func``
records around the real one, so the run's start, end and outcome are measured where the
function runs, and overlapping runs of one job are apart by construction. The schedule
lag (start - scheduled run time) goes to ``queue_wait_seconds{queue=<jobstore alias>}``.
A ``ProcessPoolExecutor`` pickles the job for another process, so it is left alone: its
jobs are not counted.

APScheduler 4.x (a pre-release, supported as of 4.0.0a6) is a different API: for its
``Scheduler`` and ``AsyncScheduler``, ``instrument()`` counts its ``JobAcquired`` and
``JobReleased`` events instead (:mod:`jobmetrics._apscheduler4`).
"""

from __future__ import annotations

import inspect
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _errors
from .core import JobMetrics, resolve_metrics
from .settings import env_addr, serve_port
from .state import STOP, SUCCESS, OuterRun, TaskState, outer_run
from .tasks import call_as_outer, status_of

__all__ = ["instrument"]

_MARK = "_jobmetrics_apscheduler"


class _Submission:
    """The run times of one submission of one job, taken by its runs in order."""

    __slots__ = ("grace", "job_id", "keys", "lock", "run_times", "series", "wait")

    def __init__(self, series: TaskState, wait: Callable[[float, float], None],
                 run_times: List[datetime], grace: Optional[float],
                 keys: Dict[Tuple[str, datetime], TaskState], job_id: str) -> None:
        self.series = series
        self.job_id = job_id
        self.keys = keys
        self.wait = wait
        self.run_times = list(run_times)
        self.grace = grace
        self.lock = threading.Lock()

    def scheduled(self, now: datetime) -> Optional[datetime]:
        # run_job goes through the run times in order and skips the missed ones (their
        # lag is past the grace time); this run is the first one still within it.
        with self.lock:
            while self.run_times:
                rt = self.run_times.pop(0)
                if self.grace is None or not self.run_times or (
                        now - rt <= timedelta(seconds=self.grace)):
                    return rt
        return None

    def started(self, job_id: str, rt: datetime) -> None:
        self.keys.pop((job_id, rt), None)

    def begin(self) -> Tuple[float, OuterRun]:
        start = self.series.begin_from_pending()
        try:
            now = datetime.now(timezone.utc)
            rt = self.scheduled(now)
            if rt is not None:
                self.started(self.job_id, rt)
                lag = (now - rt).total_seconds()
                self.wait(max(0.0, lag), start)
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("apscheduler schedule lag", exc)
        return start, OuterRun(self.series)


# Made per submission and seen only by run_job, which calls it: no functools.wraps (its
# copying was a quarter of the cost of a run).
def _recording(fn: Callable[..., Any], sub: _Submission) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        async def arun(*args: Any, **kwargs: Any) -> Any:
            start, run = sub.begin()
            token = outer_run.set(run)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                run.end(status_of(exc), start)
                raise
            finally:
                outer_run.reset(token)
            run.end(SUCCESS, start)
            return result
        return arun

    def run_(*args: Any, **kwargs: Any) -> Any:
        start, run = sub.begin()
        return call_as_outer(run, start, fn, *args, **kwargs)
    return run_


class _JobView:
    """The job as ``run_job`` sees it, with ``func`` recording around the real one."""

    def __init__(self, job: Any, func: Callable[..., Any]) -> None:
        self.__dict__["_job"] = job
        self.__dict__["func"] = func

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_job"], name)

    def __str__(self) -> str:
        return str(self.__dict__["_job"])

    def __repr__(self) -> str:
        return repr(self.__dict__["_job"])


class _Instrumentation:
    def __init__(self, scheduler: Any, m: JobMetrics) -> None:
        self.scheduler = scheduler
        self.m = m
        self._waits: Dict[str, Callable[[float, float], None]] = {}
        # (job id, scheduled run time) -> series of each run submitted and not started:
        # a missed run is found by its key, so overlapping runs of one job stay apart.
        self.keys: Dict[Tuple[str, datetime], TaskState] = {}

    def series(self, name: str) -> Optional[TaskState]:
        return self.m.task_series(name)

    def wait(self, alias: str) -> Optional[Callable[[float, float], None]]:
        w = self._waits.get(alias)
        if w is None and self.m.queue_waits is not None:
            w = self._waits[alias] = self.m.queue_waits.observer(alias)
        return w

    def wrap_executor(self, executor: Any) -> None:
        from apscheduler.executors.pool import ProcessPoolExecutor

        if isinstance(executor, ProcessPoolExecutor) or getattr(executor, _MARK, False):
            return
        from apscheduler.executors.base import MaxInstancesReachedError

        submit = executor._do_submit_job
        submit_job = executor.submit_job

        def checked_submit_job(job: Any, run_times: List[datetime]) -> Any:
            try:
                return submit_job(job, run_times)
            except MaxInstancesReachedError:
                # Skipped as max_instances runs are going: each run time is a stop.
                series = self.series(str(job.name))
                if series is not None:
                    for _ in run_times:
                        series.end(STOP, series.begin())
                raise

        def _do_submit_job(job: Any, run_times: List[datetime]) -> Any:
            try:
                series = self.series(str(job.name))
                wait = self.wait(str(job._jobstore_alias))
            except Exception as exc:
                _errors.report("apscheduler submit", exc)
                series = wait = None
            if series is None or wait is None:
                return submit(job, run_times)
            sub = _Submission(series, wait, run_times, job.misfire_grace_time, self.keys,
                              str(job.id))
            for rt in run_times:
                self.keys[(str(job.id), rt)] = series
            series.add_pending(len(run_times))
            try:
                return submit(_JobView(job, _recording(job.func, sub)), run_times)
            except BaseException:
                for rt in run_times:
                    self.keys.pop((str(job.id), rt), None)
                series.add_pending(-len(run_times))
                raise

        executor._do_submit_job = _do_submit_job
        executor.submit_job = checked_submit_job
        setattr(executor, _MARK, True)

    def on_event(self, event: Any) -> None:
        from apscheduler.events import EVENT_EXECUTOR_ADDED, EVENT_JOB_MISSED

        try:
            if event.code == EVENT_EXECUTOR_ADDED:
                self.wrap_executor(self.scheduler._lookup_executor(event.alias))
            elif event.code == EVENT_JOB_MISSED:
                # Submitted (pending), then skipped by run_job: it never ran.
                job_id = str(event.job_id)
                series = self.keys.pop((job_id, event.scheduled_run_time), None)
                if series is None:
                    # A run of this submission took this run time's key (its lag was
                    # within microseconds of the grace time): take the key it left.
                    other = next((k for k in list(self.keys) if k[0] == job_id), None)
                    if other is not None:
                        series = self.keys.pop(other, None)
                if series is not None:
                    series.end(STOP, series.begin_from_pending())
        except Exception as exc:
            _errors.report("apscheduler event", exc)


def instrument(target: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Any:
    """Instrument every job run of an APScheduler scheduler; returns ``target``.

    A 3.x scheduler: call it before or after ``start()``; executors already added are
    wrapped now, those added later (the default one at ``start()``) as they are added.
    A 4.x (pre-release, as of 4.0.0a6) ``Scheduler``/``AsyncScheduler``: its job events
    are counted; call it before the scheduler starts. ``metrics``
    defaults to :func:`jobmetrics.default_metrics`. ``port`` (default
    ``$JOBMETRICS_PORT``; none: do not serve) serves ``/metrics`` from now until the
    scheduler shuts down, on ``$JOBMETRICS_ADDR`` or the metrics' ``addr``.
    """
    metrics = resolve_metrics(metrics)
    port = serve_port(port)
    try:
        from apscheduler.schedulers.base import BaseScheduler
    except ImportError:  # 4.x has no such module
        from ._apscheduler4 import instrument4, is_scheduler4

        if not is_scheduler4(target):
            raise TypeError(f"target must be an APScheduler 4.x Scheduler or "
                            f"AsyncScheduler, got {type(target).__name__}") from None
        return instrument4(target, metrics, port)
    from apscheduler.events import EVENT_EXECUTOR_ADDED, EVENT_JOB_MISSED

    if not isinstance(target, BaseScheduler):
        raise TypeError(f"target must be an APScheduler 3.x scheduler, got "
                        f"{type(target).__name__}")
    if getattr(target, _MARK, False):
        raise ValueError("this scheduler is instrumented already: call instrument() once")
    inst = _Instrumentation(target, metrics)
    with target._executors_lock:
        for executor in target._executors.values():
            inst.wrap_executor(executor)
    target.add_listener(inst.on_event, EVENT_EXECUTOR_ADDED | EVENT_JOB_MISSED)
    setattr(target, _MARK, True)
    if port is not None:
        addr = env_addr(metrics.addr)
        served = metrics.start_http_server(port, addr=addr)
        if served is not None:
            from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN

            def stop_serving(event: Any) -> None:
                served[0].shutdown()
                served[0].server_close()

            target.add_listener(stop_serving, EVENT_SCHEDULER_SHUTDOWN)
    return target
