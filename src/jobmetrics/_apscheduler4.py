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

The events are delivered in the broker's own task after the fact, not in the context the
job function runs in, so an inner ``@m.task`` cannot take the run over: it is counted
under its own type as well as under the task id.
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
from .state import FAIL, STOP, SUCCESS, TaskState

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


class _Instrumentation:
    def __init__(self, identity: str, m: JobMetrics) -> None:
        self.identity = identity
        self.m = m
        self._series: Dict[str, TaskState] = {}
        self._wait: Optional[Callable[[float, float], None]] = None
        if m.queue_waits is not None:
            self._wait = m.queue_waits.observer(QUEUE)
        # job id -> (series, start) of each job acquired by this scheduler, not released.
        self.running: Dict[Any, Tuple[TaskState, float]] = {}

    def series(self, task_id: str) -> Optional[TaskState]:
        s = self._series.get(task_id)
        if s is None:
            s = self.m.task_series(task_id)
            if s is not None:
                self._series[task_id] = s
        return s

    def on_event(self, event: Any) -> None:
        from apscheduler import JobAcquired, JobReleased

        try:
            if event.scheduler_id != self.identity:
                return
            if isinstance(event, JobAcquired):
                series = self.series(str(event.task_id))
                if series is not None:
                    self.running[event.job_id] = (series, series.begin())
            elif isinstance(event, JobReleased):
                self.released(event)
        except Exception as exc:
            _errors.report("apscheduler 4 event", exc)

    def released(self, event: Any) -> None:
        entry = self.running.pop(event.job_id, None)
        if entry is None:
            # Released without a JobAcquired: discarded while being acquired (SQL data
            # stores: missed start deadline, deserialization failed), or abandoned by an
            # earlier run of a scheduler with this identity (reaped at start).
            series = self.series(str(event.task_id))
            if series is None:
                return
            series.begin()
        else:
            series = entry[0]
        status = STATUS_OF.get(getattr(event.outcome, "name", ""), FAIL)
        started: Optional[datetime] = event.started_at
        now = perf_counter()
        start = now
        if started is not None:
            start = now - max(0.0, (event.timestamp - started).total_seconds())
            scheduled: Optional[datetime] = event.scheduled_start
            if scheduled is not None and self._wait is not None:
                self._wait(max(0.0, (started - scheduled).total_seconds()), now)
        series.end(status, start)


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
