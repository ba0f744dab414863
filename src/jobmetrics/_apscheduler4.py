"""APScheduler 4.x (pre-release, as of 4.0.0a6): the scheduler's job events, counted.

:func:`jobmetrics.apscheduler.instrument` dispatches here for a 4.x ``Scheduler`` or
``AsyncScheduler``. It subscribes to the scheduler's event broker (``JobAcquired``,
``JobReleased``, ``SchedulerStopped``) with a callback run on the scheduler's event loop,
in the order the events were published, and keeps only the events of this scheduler
(``scheduler_id`` is its ``identity``: a shared broker carries other schedulers' events).

A job is ``running_task`` from ``JobAcquired`` to its ``JobReleased``, keyed by job id,
so overlapping jobs of one task stay apart. ``type`` is the task id. The outcome maps to
a status (:data:`STATUS_OF`); the duration is the release's ``started_at`` to its
``timestamp`` (the scheduler's own clock), 0 s for a job that never started. The
schedule lag, ``started_at - scheduled_start`` (jobs from a schedule only), goes to
``queue_wait_seconds{queue="default"}``.

The events are delivered in the broker's own task after the fact, not where the job
function runs, so for an inner ``@m.task`` to take the run over (counted once, under its
own type) each executor's ``run_job`` sets the job's run as the outer run: the executors
are attrs slots classes, so each instance present at ``instrument()`` gets, in place, a
subclass of its class (same name, still an instance of it) whose ``run_job`` does that;
anyio copies the context into the thread pool's worker thread. The process pool (another
process) is left alone.
"""

from __future__ import annotations

import threading
import weakref
from datetime import datetime
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _errors
from .core import JobMetrics
from .settings import env_addr
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run

_MARK = "_jobmetrics_apscheduler4"

__all__ = ["QUEUE", "STATUS_OF", "instrument4", "is_scheduler4"]

#: ``queue`` label of the schedule lag: a 4.x scheduler has one data store, unnamed.
QUEUE = "default"

#: ``JobOutcome`` name -> status. A job that could not be deserialized is a fault of the
#: job as stored (not a decision to skip it), so ``fail``; one that missed its start
#: deadline, was cancelled, or was abandoned by a worker that stopped is ``stop``.
STATUS_OF: Dict[str, int] = {
    "success": SUCCESS,
    "error": FAIL,
    "deserialization_failed": FAIL,
    "missed_start_deadline": STOP,
    "cancelled": STOP,
    "abandoned": STOP,
}


def is_scheduler4(target: Any) -> bool:
    """Whether ``target`` is an APScheduler 4.x ``Scheduler`` or ``AsyncScheduler``."""
    try:
        from apscheduler import AsyncScheduler, Scheduler
    except ImportError:
        return False
    return isinstance(target, (AsyncScheduler, Scheduler))


class _JobRun(OuterRun):
    """One job acquired by the scheduler: counted at its release, unless an inner
    ``@m.task`` took it over (:meth:`claim`, from the job function's thread or task)."""

    __slots__ = ("begun", "lock")

    def __init__(self, state: TaskState, lock: threading.Lock) -> None:
        super().__init__(state)
        self.lock = lock
        self.begun = False

    def claim(self) -> None:
        """An inner task runs the job: it counts it; this run's ``running`` goes."""
        with self.lock:
            if not self.claimed:
                self.claimed = True
                if self.begun:
                    self.state.unrun()

    def acquired(self) -> None:
        with self.lock:
            if not self.begun:
                self.begun = True
                if not self.claimed:
                    self.state.begin()


class _Instrumentation:
    def __init__(self, identity: str, m: JobMetrics) -> None:
        self.identity = identity
        self.m = m
        self._wait: Optional[Callable[[float, float], None]] = None
        if m.queue_waits is not None:
            self._wait = m.queue_waits.observer(QUEUE)
        # job id -> run of each job acquired by this scheduler and not released: the
        # events come on the loop, a claim from the job's worker thread.
        self.lock = threading.Lock()
        self.runs: Dict[Any, _JobRun] = {}

    def series(self, task_id: str) -> Optional[TaskState]:
        return self.m.task_series(task_id)

    def run_of(self, job_id: Any, task_id: str) -> Optional[_JobRun]:
        """The run of a job (made on its first event or start)."""
        with self.lock:
            run = self.runs.get(job_id)
            if run is None:
                series = self.series(task_id)
                if series is None:
                    return None
                run = self.runs[job_id] = _JobRun(series, self.lock)
            return run

    def on_event(self, event: Any) -> None:
        from apscheduler import JobAcquired, JobReleased

        try:
            if event.scheduler_id != self.identity:
                return
            if isinstance(event, JobAcquired):
                run = self.run_of(event.job_id, str(event.task_id))
                if run is not None:
                    run.acquired()
            elif isinstance(event, JobReleased):
                self.released(event)
        except Exception as exc:
            _errors.report("apscheduler 4 event", exc)

    def released(self, event: Any) -> None:
        # Released without a JobAcquired: discarded while being acquired (SQL data
        # stores: missed start deadline, deserialization failed), or abandoned by an
        # earlier run of a scheduler with this identity (reaped at start).
        run = self.run_of(event.job_id, str(event.task_id))
        if run is None:
            return
        run.acquired()
        with self.lock:
            self.runs.pop(event.job_id, None)
        started: Optional[datetime] = event.started_at
        now = perf_counter()
        start = now
        if started is not None:
            start = now - max(0.0, (event.timestamp - started).total_seconds())
            scheduled: Optional[datetime] = event.scheduled_start
            if scheduled is not None and self._wait is not None:
                self._wait(max(0.0, (started - scheduled).total_seconds()), now)
        if not run.claimed:
            run.state.end(STATUS_OF.get(getattr(event.outcome, "name", ""), FAIL), start)

    def job_run(self, job: Any) -> Optional[_JobRun]:
        """The run an executor starts ``job`` in, if this scheduler acquired it."""
        try:
            return self.run_of(job.id, str(job.task_id))
        except Exception as exc:  # pragma: no cover - defensive
            _errors.report("apscheduler 4 job start", exc)
            return None


#: identity -> instrumentation of each instrumented scheduler (while its broker lives).
_by_identity: weakref.WeakValueDictionary[str, _Instrumentation] = (
    weakref.WeakValueDictionary())
_subclasses: Dict[type, type] = {}


def _recording_class(cls: type) -> type:
    """``cls`` whose ``run_job`` runs the job as an outer run an inner ``@m.task``
    takes over (anyio copies the context into the thread pool's worker thread)."""
    sub = _subclasses.get(cls)
    if sub is None:
        async def run_job(self: Any, func: Callable[..., Any], job: Any) -> Any:
            inst = _by_identity.get(str(getattr(job, "acquired_by", None)))
            run = inst.job_run(job) if inst is not None else None
            token = outer_run.set(run)
            try:
                return await cls.run_job(self, func, job)  # type: ignore[attr-defined]
            finally:
                outer_run.reset(token)

        sub = type(cls.__name__, (cls,), {"__slots__": (), "run_job": run_job,
                                          "__qualname__": cls.__qualname__,
                                          "__module__": cls.__module__,
                                          _MARK: True})
        _subclasses[cls] = sub
    return sub


def _wrap_executors(executors: Any) -> None:
    from apscheduler.executors.subprocess import ProcessPoolJobExecutor

    for executor in list(executors.values()):
        # The process pool pickles the function into another process, where the
        # context does not go: left alone.
        if isinstance(executor, ProcessPoolJobExecutor) or getattr(executor, _MARK, False):
            continue
        try:
            executor.__class__ = _recording_class(type(executor))
        except TypeError:  # an executor class whose layout takes no subclass
            pass


_lock = threading.Lock()
_instrumented: List[Tuple[weakref.ref[Any], str]] = []


def instrument4(target: Any, metrics: JobMetrics, port: Optional[int]) -> Any:
    """Instrument an APScheduler 4.x scheduler (see the module's docstring)."""
    from apscheduler import (
        JobAcquired,
        JobReleased,
        SchedulerStopped,
    )

    broker = target.event_broker
    identity = str(target.identity)
    # attrs slots classes take no mark: the instrumented identities are kept per broker
    # (a sync Scheduler and its AsyncScheduler share both; brokers are not hashable).
    with _lock:
        _instrumented[:] = [(r, i) for r, i in _instrumented if r() is not None]
        if any(r() is broker and i == identity for r, i in _instrumented):
            raise ValueError(
                "this scheduler is instrumented already: call instrument() once")
        _instrumented.append((weakref.ref(broker), identity))
    inst = _Instrumentation(identity, metrics)
    _by_identity[identity] = inst
    _wrap_executors(target.job_executors)
    # is_async=True: the callback runs on the scheduler's loop, events in order (a sync
    # Scheduler's own subscribe() would run it in a worker thread, and start the
    # scheduler's services).
    broker.subscribe(inst.on_event, {JobAcquired, JobReleased}, is_async=True)
    if port is not None:
        addr = env_addr(metrics.addr)
        served = metrics.start_http_server(port, addr=addr)
        if served is not None:
            def stop_serving(event: Any) -> None:
                try:
                    served[0].shutdown()
                    served[0].server_close()
                except Exception as exc:  # pragma: no cover - defensive
                    _errors.report("apscheduler 4 stop serving", exc)

            broker.subscribe(stop_serving, {SchedulerStopped}, is_async=False,
                             one_shot=True)
    return target
