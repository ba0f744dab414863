"""RQ: ``rq worker --worker-class jobmetrics.rq.Worker`` records every job it runs.

:class:`Worker` (RQ's default, a work horse forked per job) and :class:`SimpleWorker`
(jobs in the worker's own process) record around ``perform_job``, where the job runs:
``type`` is the job's function path (``job.func_name``), the job waits in
``queue_wait_seconds{queue}`` from ``enqueued_at`` to its start, and its end state maps
onto a status: ``finished`` -> ``success``; ``failed`` -> ``fail``; a failure or a
returned ``Retry`` that requeues or schedules the job -> ``fail`` and
``task_retries_total`` +1; ``stopped``/``canceled`` -> ``stop``. A job cancelled in Redis
before a worker took it never ran there and is not counted.

A work horse that dies (SIGKILL, out of memory) or is stopped (``send_stop_job_command``)
cannot count its own job: the worker's main process, which sees it exit, counts it from
the job's state in Redis. Every work horse records into a multi-process directory the
worker makes as it starts (:mod:`jobmetrics.forking`), and its file is folded into the
archive as soon as it exits, so the finished counts of every horse are kept and the
directory holds a handful of files however many jobs ran. With ``$JOBMETRICS_PORT`` (or
the ``jobmetrics_port`` class attribute) the main process serves ``/metrics`` on
``$JOBMETRICS_ADDR`` when set.
"""

from __future__ import annotations

import threading
from time import perf_counter
from typing import Any, ClassVar, Optional, Tuple

import rq.worker
from rq.utils import now as rq_now

from . import _errors
from .core import JobMetrics, default_metrics
from .forking import ensure_directory
from .settings import env_addr, env_port
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run

__all__ = ["SimpleWorker", "Worker", "WorkerMixin"]

_STATUS = {"finished": SUCCESS, "failed": FAIL, "stopped": STOP, "canceled": STOP}
# A job that failed (or returned Retry) and will run again is back in one of these.
_RETRIED = ("queued", "scheduled", "deferred")


def _status_of(job: Any) -> Tuple[int, bool]:
    """``(status, retried)`` from the job's state after a run."""
    raw = job.get_status(refresh=False)
    name = str(getattr(raw, "value", raw))
    if name in _RETRIED:
        return FAIL, True
    return _STATUS.get(name, FAIL), False


class WorkerMixin:
    """The recording of :class:`Worker` and :class:`SimpleWorker`, for a worker class of
    your own: ``class MyWorker(WorkerMixin, rq.Worker)``.

    Class attributes (set them on a subclass): ``jobmetrics`` (default: the process-wide
    :func:`~jobmetrics.default_metrics`) and ``jobmetrics_port`` (default:
    ``$JOBMETRICS_PORT``; none: do not serve).
    """

    jobmetrics: ClassVar[Optional[JobMetrics]] = None
    jobmetrics_port: ClassVar[Optional[int]] = None
    #: Whether this worker forks a work horse per job (set by :class:`Worker`).
    jobmetrics_forks: ClassVar[bool] = False
    jobmetrics_directory: Optional[str] = None
    jobmetrics_server: Optional[Tuple[Any, threading.Thread]] = None

    def _jm(self) -> JobMetrics:
        m = type(self).jobmetrics
        return default_metrics() if m is None else m

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop, with the directory made and ``/metrics`` served first."""
        m = self._jm()
        if self.jobmetrics_forks and self.jobmetrics_directory is None:
            try:
                self.jobmetrics_directory = ensure_directory(m)
            except Exception as exc:
                _errors.report("rq work horse directory", exc)
        port = type(self).jobmetrics_port
        if port is None:
            port = env_port()
        if port is not None and self.jobmetrics_server is None:
            addr = env_addr(m.addr)
            self.jobmetrics_server = m.start_http_server(port, addr=addr)
        result: bool = super().work(*args, **kwargs)  # type: ignore[misc]
        return result

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> bool:
        """Run the job as RQ does, counted once (a ``@m.task`` function inside takes
        the run over)."""
        series = None
        try:
            series = self._jm().task_series(job.func_name or "unknown")
            if series is not None:
                self._observe_wait(job, queue)
        except Exception as exc:
            _errors.report("rq perform_job", exc)
        if series is None:
            done: bool = super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
            return done
        run = OuterRun(series)
        token = outer_run.set(run)
        start = series.begin()
        try:
            done = super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
        except BaseException:
            outer_run.reset(token)
            run.end(FAIL, start)
            raise
        outer_run.reset(token)
        try:
            status, retried = _status_of(job)
            if retried:
                series.retried()
        except Exception as exc:
            _errors.report("rq job status", exc)
            status = SUCCESS if done else FAIL
        run.end(status, start)
        return done

    def _observe_wait(self, job: Any, queue: Any) -> None:
        enqueued = job.enqueued_at
        if enqueued is None:
            return
        name = getattr(queue, "name", None) or job.origin or "default"
        observers = self.__dict__.setdefault("_jobmetrics_waits", {})
        observe = observers.get(name)
        if observe is None:
            waits = self._jm().queue_waits
            if waits is None:
                return
            observe = observers[name] = waits.observer(name)
        current = rq_now()
        if enqueued.tzinfo is None and current.tzinfo is not None:
            current = current.replace(tzinfo=None)
        observe(max((current - enqueued).total_seconds(), 0.0), perf_counter())


class Worker(WorkerMixin, rq.worker.Worker):
    """RQ's default worker (a work horse forked per job), recording every job."""

    jobmetrics_forks: ClassVar[bool] = True
    _jobmetrics_exit: Optional[int] = None

    def wait_for_horse(self) -> Any:
        """RQ's wait, remembering how the horse exited."""
        found = super().wait_for_horse()
        try:
            if found[0] is not None:
                self._jobmetrics_exit = found[1]
        except Exception:  # pragma: no cover - defensive
            pass
        return found

    def monitor_work_horse(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        """RQ's monitoring; a horse that did not exit normally could not count its job:
        the main process counts it, from the job's state in Redis."""
        self._jobmetrics_exit = None
        horse = self.horse_pid
        started = perf_counter()
        super().monitor_work_horse(job, queue, *args, **kwargs)
        try:
            if self._jobmetrics_exit not in (None, 0):
                self._count_lost(job, started)
            directory = self.jobmetrics_directory
            if directory is not None and horse:
                from .multiprocess import mark_process_dead

                mark_process_dead(horse, directory)
        except Exception as exc:
            _errors.report("rq work horse exit", exc)

    def _count_lost(self, job: Any, started: float) -> None:
        series: Optional[TaskState] = self._jm().task_series(job.func_name or "unknown")
        if series is None:
            return
        job.refresh()
        status, retried = _status_of(job)
        if status == SUCCESS:
            return  # the horse finished and counted it, then exited oddly
        if retried:
            series.retried()
        series.begin()  # running here is 0 again at once: the horse's went with it
        series.end(status, started)


class SimpleWorker(WorkerMixin, rq.worker.SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs in the worker's own process), recording every job."""
