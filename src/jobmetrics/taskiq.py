"""Taskiq: ``jobmetrics.taskiq.instrument(broker)`` records every task the broker's
workers run, with no decorator on each.

``instrument(broker)`` adds a :class:`JobMetricsMiddleware` (a ``taskiq.TaskiqMiddleware``)
to the broker; ``broker.add_middlewares(JobMetricsMiddleware())`` is the same. ``type`` is
the task name (``message.task_name``). A run begins in ``pre_execute`` (running +1) and
ends in ``post_execute`` with the ``TaskiqResult``: not ``is_err`` is ``success``; an
error is ``fail`` (a ``TimeoutError`` from the task's ``timeout`` label included); a run
re-sent by a retry middleware (``SimpleRetryMiddleware``/``SmartRetryMiddleware``, or any
that kicks the same task id again from ``on_error``, or replaces the error with
``NoResultError``) is ``fail`` and ``task_retries_total`` +1; ``CancelledError``,
``KeyboardInterrupt``, :class:`jobmetrics.Stopped` and a task raising ``NoResultError``
(it skips its result) are ``stop``, and so is a run still going when its worker process
shuts down (``taskiq worker`` waits for running tasks only ``--wait-tasks-timeout``
seconds, then drops them). The duration is read with ``perf_counter`` from
``pre_execute`` to the first of ``on_error``, the retry's ``pre_send`` or
``post_execute``: the result's ``execution_time`` is wall-clock time rounded to 10 ms.

A run whose ``post_execute`` never comes (a later middleware raised first) ends when the
receiver's task for it does; a worker process killed mid-run takes its running count
with it (a dead process's gauges leave every scrape). An inner ``@m.task`` takes the run
over (the run is an outer run in the receiver's task, whose context the task function
runs in, or a copy of it for a sync function in the thread pool).

``taskiq worker module:broker --workers N`` starts N worker processes from a main process
that imports neither the broker nor the tasks (each worker imports them), so no code of
ours runs before the fork. The worker processes of one start find the same fresh
directory, named after the main process and its start time (a restart never mixes with
the last one), in the middleware's ``startup``; the first one makes it and a small
process that removes it once the main process exits, and each records into it
(:mod:`jobmetrics.forking`); a worker restarted by the main process joins it, and the
archive keeps the counts of the one it replaces. With ``port=`` or ``$JOBMETRICS_PORT``
one worker process (the holder of the directory's serving lock) serves ``/metrics`` for
all of them, on ``$JOBMETRICS_ADDR`` when set; the others wait for the lock, so another
takes over at once if it dies. A worker run in your own process records into its
metrics as they are.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import multiprocessing
import subprocess
import sys
import threading
from time import perf_counter
from typing import Any, List, Optional, Set

from taskiq import AsyncBroker, NoResultError, TaskiqMessage, TaskiqMiddleware, TaskiqResult

from . import _errors
from .core import JobMetrics
from .forking import (
    fold_own_file,
    needs_directory,
    record_into,
    start_directory,
    start_time,
)
from .serving import WorkerEndpoint
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run
from .tasks import status_of

__all__ = ["JobMetricsMiddleware", "instrument"]

UNKNOWN = "unknown"

# The janitor: a process of its own (stdlib only, no inherited descriptors) that waits
# for the main process of the start to exit, then removes the start's directory.
_JANITOR = r"""# jobmetrics taskiq janitor
import os, select, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
pid, start, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def alive():
    if not start:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    # An exited main process its parent has not reaped yet is a zombie: gone.
    return len(fields) > 19 and fields[0] not in (b"Z", b"X") and fields[19].decode() == start

try:
    fd = os.pidfd_open(pid)
except (AttributeError, OSError):
    fd = None
if fd is not None and alive():
    select.select([fd], [], [])
while alive():
    time.sleep(1)
shutil.rmtree(path, ignore_errors=True)
"""
_janitors: List[subprocess.Popen[bytes]] = []


def _under_cli() -> Optional[int]:
    """The pid of the ``taskiq worker`` main process when this is one of its worker
    processes, else ``None``."""
    parent = multiprocessing.parent_process()
    if parent is None or "taskiq.cli.worker.run" not in sys.modules:
        return None
    if not multiprocessing.current_process().name.startswith("worker-"):
        return None
    return parent.pid


def _start_directory(main_pid: int) -> str:
    """The directory of the start of the main process ``main_pid``; the process that
    makes it also starts its janitor."""
    path, made = start_directory("taskiq", main_pid)
    if made:
        try:
            _janitors.append(subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _JANITOR, str(main_pid),
                 start_time(main_pid), path],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True))
        except Exception as exc:  # the directory is used all the same, and left behind
            _errors.report("taskiq janitor", exc)
    return path


class _Run:
    """One run of a task in this process, from ``pre_execute`` to its end."""

    __slots__ = ("current", "done", "ended_at", "error", "outer", "retried", "series",
                 "start", "task_id", "task_name", "token")

    def __init__(self, series: TaskState, message: TaskiqMessage) -> None:
        self.series = series
        self.outer = OuterRun(series)
        self.task_id = message.task_id
        self.task_name = message.task_name
        self.token: Optional[contextvars.Token[Optional[OuterRun]]] = None
        self.current: Optional[contextvars.Token[Optional[_Run]]] = None
        self.start = 0.0
        self.ended_at: Optional[float] = None
        self.error: Optional[BaseException] = None
        self.retried = False
        self.done = False

    def stopped_clock(self) -> None:
        if self.ended_at is None:
            self.ended_at = perf_counter()


def _status_of_error(error: Optional[BaseException]) -> int:
    if error is None:
        return FAIL
    if isinstance(error, NoResultError):
        return STOP  # the task chose to skip its result
    return status_of(error)


class JobMetricsMiddleware(TaskiqMiddleware, WorkerEndpoint):
    """Record every task run of the broker's workers: ``broker.add_middlewares(
    JobMetricsMiddleware())`` (or :func:`instrument`).

    ``metrics`` defaults to the process-wide :func:`~jobmetrics.default_metrics`;
    ``port`` (default ``$JOBMETRICS_PORT``; none: do not serve) makes one worker process
    serve ``/metrics`` for all of them. Raises ``TypeError``/``ValueError`` for a bad
    ``metrics``, ``port`` or ``$JOBMETRICS_PORT``. Add it once; last (as
    :func:`instrument` does) its ``post_execute`` comes first, so the other
    middlewares' time is not in a successful run's duration.
    """

    def __init__(self, metrics: Optional[JobMetrics] = None, *,
                 port: Optional[int] = None) -> None:
        TaskiqMiddleware.__init__(self)
        WorkerEndpoint.__init__(self, metrics, port)
        self._lock = threading.Lock()
        self._runs: Set[_Run] = set()
        # The run (of this middleware) of the receiver's task this code executes in.
        self._current: contextvars.ContextVar[Optional[_Run]] = contextvars.ContextVar(
            f"jobmetrics_taskiq_run_{id(self):x}", default=None)

    # -- the worker process ------------------------------------------------------

    def startup(self) -> None:
        """The broker starts: in a worker process, take the start's directory and
        serve ``/metrics`` when asked to."""
        broker = self.broker
        if broker is None or not broker.is_worker_process:
            return
        try:
            main_pid = _under_cli()
            if main_pid is not None and needs_directory(self.metrics):
                path = _start_directory(main_pid)
                record_into(self.metrics, path)
                self.directory = path
        except Exception as exc:
            _errors.report("taskiq startup", exc)
        self.serve_for_start(self.directory or self.metrics.directory,
                             "taskiq metrics endpoint")

    def shutdown(self) -> None:
        """The broker shuts down: in a worker process, runs still going are ``stop``
        (the worker leaves them), and this process's file joins the archive."""
        broker = self.broker
        if broker is None or not broker.is_worker_process:
            return
        with self._lock:
            left = list(self._runs)
        for run in left:
            self._end(run, STOP)
        fold_own_file(self.directory, "taskiq worker shutdown")

    # -- runs ------------------------------------------------------------------------

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """A run begins: running +1, an outer run for an inner ``@m.task``."""
        try:
            series = self.metrics.task_series(message.task_name or UNKNOWN)
            if series is None:
                return message
            run = _Run(series, message)
            run.token = outer_run.set(run.outer)
            run.current = self._current.set(run)
            run.start = series.begin()
            with self._lock:
                self._runs.add(run)
            try:
                task = asyncio.current_task()
            except RuntimeError:
                task = None
            if task is not None:
                task.add_done_callback(functools.partial(self._receiver_done, run))
        except Exception as exc:
            _errors.report("taskiq pre_execute", exc)
        return message

    def on_error(self, message: TaskiqMessage, result: TaskiqResult[Any],
                 exception: BaseException) -> None:
        """The run raised: note what (a retry middleware may replace the result's
        error with ``NoResultError`` before ``post_execute``)."""
        run = self._current.get()
        if run is not None and not run.done:
            run.stopped_clock()
            run.error = exception

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """A message is sent: the same task sent again from inside its own run is a
        retry of it."""
        run = self._current.get()
        if (run is not None and not run.done and message.task_id == run.task_id
                and message.task_name == run.task_name):
            run.stopped_clock()
            run.retried = True
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """The run ended with ``result``: count it."""
        run = self._current.get()
        if run is None:
            return
        try:
            _leave(self._current, run)
            if run.done:
                return  # ended already, by the worker's shutdown
            if not result.is_err:
                self._end(run, SUCCESS)
                return
            if (run.error is not None and not isinstance(run.error, NoResultError)
                    and isinstance(result.error, NoResultError)):
                run.retried = True  # a retry middleware took the error over
            error = run.error if run.error is not None else result.error
            self._end(run, FAIL if run.retried else _status_of_error(error))
        except Exception as exc:
            _errors.report("taskiq post_execute", exc)

    def _receiver_done(self, run: _Run, task: asyncio.Task[Any]) -> None:
        # The receiver's task for the run is over without our post_execute.
        if run.done:
            return
        try:
            if task.cancelled():
                status = STOP
            elif run.error is not None:
                status = FAIL if run.retried else _status_of_error(run.error)
            else:
                status = FAIL
            self._end(run, status)
        except Exception as exc:
            _errors.report("taskiq receiver done", exc)

    def _end(self, run: _Run, status: int) -> None:
        with self._lock:
            if run.done:
                return
            run.done = True
            self._runs.discard(run)
        if run.retried and status == FAIL:
            run.series.retried()
        start = run.start
        if run.ended_at is not None:
            start += perf_counter() - run.ended_at
        run.outer.end(status, start)


def _leave(current: contextvars.ContextVar[Optional[_Run]], run: _Run) -> None:
    # Back to the runs around this one (a broker that runs a task sent from inside
    # another run in place, as InMemoryBroker(await_inplace=True) does).
    try:
        if run.current is not None:
            current.reset(run.current)
        if run.token is not None:
            outer_run.reset(run.token)
    except (ValueError, RuntimeError):  # pragma: no cover - another context
        current.set(None)
        outer_run.set(None)


def instrument(broker: AsyncBroker, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> JobMetricsMiddleware:
    """Add a :class:`JobMetricsMiddleware` to ``broker`` (a ``taskiq.AsyncBroker``)
    and return it; call it where the broker is defined (the module ``taskiq worker``
    imports). ``metrics`` defaults to :func:`jobmetrics.default_metrics`; ``port``
    (default ``$JOBMETRICS_PORT``; none: do not serve) serves ``/metrics`` for all of
    the worker's processes from one of them. ``TypeError`` for a ``broker`` that is
    not a broker or a bad ``metrics``; ``ValueError`` for a bad ``port`` or a broker
    instrumented already.
    """
    if not isinstance(broker, AsyncBroker):
        raise TypeError(f"broker must be a taskiq AsyncBroker, got {type(broker).__name__}")
    if any(isinstance(mw, JobMetricsMiddleware) for mw in broker.middlewares):
        raise ValueError("broker has a JobMetricsMiddleware already: instrument it once")
    middleware = JobMetricsMiddleware(metrics, port=port)
    broker.add_middlewares(middleware)
    return middleware
