"""Huey: one call counts every task a Huey instance's consumers run, on any worker type.

>>> huey = RedisHuey("app")
>>> jobmetrics.huey.instrument(huey)

``instrument()`` connects to Huey's signals (``huey.signal()``). They fire in the thread,
greenlet or process that runs the task, in this order (``Huey.execute``/``_execute``):

- ``executing`` -> the task is running (and an ``OuterRun``: a ``@m.task`` function
  inside takes the run over, so it is counted once, under the innermost type);
- then one of ``complete`` (``success``); ``error`` and ``timeout`` (``fail``);
  ``canceled`` (``CancelExecution`` from a pre-execute hook or from the task),
  ``locked`` (``lock_task`` was held), ``rate-limited`` and ``interrupted`` (the worker
  shutting down) (``stop``); an attempt Huey will retry (``task.retries`` left when the
  signal fires, as Huey decides it right after) is ``fail`` whatever ended it, and
  ``task_retries_total`` +1 (a pre-execute hook's ``CancelExecution`` is never retried:
  told by the hook's frame in the exception's traceback); a ``RetryTask`` sends only
  ``retrying``, which ends the run as ``fail`` and +1;
- ``revoked`` and ``expired`` fire instead of ``executing``: the task is skipped, a
  ``stop`` with a 0 s run time that never moves ``running_task``.

``type`` is the task's name (``task.name``: the function's name, or ``name=``). Runs are
kept apart by their task object, so two runs of one task id in two worker threads each
count once; ``interrupted`` sent by the consumer's main thread for the tasks its threads
were running at shutdown ends them from there.

``enqueued`` and ``scheduled`` are not used: they fire where a task is sent (the producer,
or the worker putting a task with an ETA into the schedule in storage), and a Huey worker
holds no task it does not run, so there is no ``pending_task``. The backlog is
``queue_size{queue=<huey.name>}``: ``huey.pending_count()`` read by the consumer's main
process at scrape time, off the scrape's thread, waited for at most
:data:`BACKLOG_WAIT` seconds (the last value read stands when storage is slow; one read at
a time).

Processes: ``instrument()`` wraps the instance's ``create_consumer`` (what
``huey_consumer`` and Django's ``run_huey`` call), and the consumer's ``start``. Before
``start`` forks the workers of ``-k process`` it gives metrics that record into memory a
fresh multi-process directory (:mod:`jobmetrics.forking`; removed when the consumer
exits), so the main process answers for every worker process (each folds its file in as
it exits); with ``port=`` or ``$JOBMETRICS_PORT`` the main process serves ``/metrics``.
A ``Consumer`` made directly takes the same with :meth:`Instrumentation.attach`.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import sys
import threading
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional

from . import _errors
from .core import JobMetrics
from .forking import ensure_directory, fold_own_file
from .serving import WorkerEndpoint
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run

__all__ = ["BACKLOG_WAIT", "Instrumentation", "instrument"]

#: The longest a scrape waits for ``huey.pending_count()`` (seconds).
BACKLOG_WAIT = 0.5

# Huey's signal names (huey.signals), as strings so any version's set connects.
EXECUTING = "executing"
COMPLETE = "complete"
ERROR = "error"
TIMEOUT = "timeout"
RETRYING = "retrying"
CANCELED = "canceled"
LOCKED = "locked"
RATE_LIMITED = "rate-limited"
INTERRUPTED = "interrupted"
REVOKED = "revoked"
EXPIRED = "expired"

_ENDS_FAIL = (ERROR, TIMEOUT)
_ENDS_STOP = (CANCELED, LOCKED, RATE_LIMITED)
_SKIPS = (REVOKED, EXPIRED)
_SIGNALS = (EXECUTING, COMPLETE, *_ENDS_FAIL, *_ENDS_STOP, INTERRUPTED, RETRYING, *_SKIPS)


class _Run:
    """One execution of one task object, from ``executing`` to its end."""

    __slots__ = ("run", "start", "task", "token")

    def __init__(self, task: Any, run: OuterRun,
                 token: contextvars.Token[Optional[OuterRun]], start: float) -> None:
        self.task = task  # held, so its id() is not reused while it runs
        self.run = run
        self.token = token
        self.start = start


def _in_pre_execute(tb: Optional[TracebackType]) -> bool:
    """The exception being handled came from Huey's pre-execute hooks (the task body
    never ran, and Huey does not retry it)."""
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_run_pre_execute":
            return True
        tb = tb.tb_next
    return False


class _Backlog:
    """``huey.pending_count()`` read in a thread of its own, one read at a time; a
    reader waits at most ``wait`` seconds and gets the last value read."""

    def __init__(self, huey: Any, wait: float) -> None:
        self._huey = huey
        self._wait = wait
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._value = 0
        self._reading: Optional[threading.Event] = None

    def size(self) -> int:
        """The queue's size (0 in a process forked after this was made: the process
        that made it reports the queue)."""
        if os.getpid() != self._pid:
            return 0
        with self._lock:
            done = self._reading
            if done is None:
                done = self._reading = threading.Event()
                threading.Thread(target=self._read, args=(done,), daemon=True,
                                 name="jobmetrics-huey-backlog").start()
        done.wait(self._wait)
        return self._value

    def _read(self, done: threading.Event) -> None:
        try:
            self._value = int(self._huey.pending_count())
        except Exception as exc:
            _errors.report("huey queue size", exc)
        finally:
            with self._lock:
                self._reading = None
            done.set()


class Instrumentation(WorkerEndpoint):
    """What :func:`instrument` connected to one Huey instance (returned for inspection
    and tests): ``huey``, the Huey instance; ``directory``, the multi-process directory
    the consumer made as it started (process workers with metrics in memory), else
    ``None``; ``server``, the ``/metrics`` endpoint the consumer's main process serves
    (:class:`~jobmetrics.serving.WorkerEndpoint`).
    """

    def __init__(self, huey: Any, metrics: Optional[JobMetrics], port: Optional[int]) -> None:
        super().__init__(metrics, port)
        self.huey = huey
        self._lock = threading.Lock()
        self._active: Dict[int, List[_Run]] = {}
        self._backlog: Optional[_Backlog] = None
        self._main_pid: Optional[int] = None

    def _series(self, task: Any) -> Optional[TaskState]:
        name = getattr(task, "name", None)
        task_type = name if isinstance(name, str) and name else type(task).__name__
        return self.metrics.task_series(task_type)

    # -- signals -------------------------------------------------------------------

    def receive(self, signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        """Huey's signal receiver (connected for the signals this module uses)."""
        try:
            if signal == EXECUTING:
                self._begin(task)
            elif signal == COMPLETE:
                self._end(task, SUCCESS, False)
            elif signal in _ENDS_FAIL:
                self._end(task, FAIL, bool(task.retries))
            elif signal == CANCELED:
                exc, tb = sys.exc_info()[1:]
                if _in_pre_execute(tb) or exc is None:
                    self._end(task, STOP, False, skipped=True)
                else:
                    self._end_stopped(task)
            elif signal in (LOCKED, RATE_LIMITED):
                self._end_stopped(task)
            elif signal == INTERRUPTED:
                self._end(task, STOP, False)
            elif signal == RETRYING:
                # Only a RetryTask reaches here with its run open; other retries ended
                # it (fail, +1) at their own signal.
                self._end(task, FAIL, True)
            elif signal in _SKIPS:
                self._end(task, STOP, False, skipped=True)
        except Exception as exc:
            _errors.report(f"huey signal {signal}", exc)

    def _begin(self, task: Any) -> None:
        series = self._series(task)
        if series is None:
            return
        run = OuterRun(series)
        token = outer_run.set(run)
        start = series.begin()
        with self._lock:
            self._active.setdefault(id(task), []).append(_Run(task, run, token, start))

    def _end_stopped(self, task: Any) -> None:
        # Huey retries it if it has retries left (decided right after this signal).
        if task.retries:
            self._end(task, FAIL, True)
        else:
            self._end(task, STOP, False)

    def _end(self, task: Any, status: int, retried: bool, *, skipped: bool = False) -> None:
        key = id(task)
        with self._lock:
            stack = self._active.get(key)
            found = stack.pop() if stack else None
            if stack is not None and not stack:
                del self._active[key]
        if found is None:
            if skipped:  # never executing: a stop run that never ran
                series = self._series(task)
                if series is not None:
                    series.end(STOP, series.begin())
            # else: ended already (interrupted from the consumer's main thread).
            return
        try:
            outer_run.reset(found.token)
        except ValueError:
            pass  # ended from another thread (interrupted at shutdown)
        if retried:
            found.run.state.retried()
        found.run.end(status, found.start)

    # -- the consumer ----------------------------------------------------------------

    def attach(self, consumer: Any) -> Any:
        """Make ``consumer`` (a ``huey.consumer.Consumer`` of this instance, not yet
        started) give process workers a multi-process directory before they fork, serve
        ``/metrics`` when a port is set, and report the queue's size. Consumers made by
        ``huey.create_consumer()`` (``huey_consumer``, ``run_huey``) are attached
        already. Returns ``consumer``; ``ValueError`` for a consumer of another Huey
        instance."""
        if getattr(consumer, "huey", None) is not self.huey:
            raise ValueError("consumer must be a Consumer of the instrumented Huey instance")
        if getattr(consumer, "_jobmetrics_attached", False):
            return consumer
        start: Callable[[], Any] = consumer.start
        stop: Callable[..., Any] = consumer.stop

        def start_consumer() -> Any:
            self._starting(consumer)
            result = start()
            self._started()
            return result

        def stop_consumer(*args: Any, **kwargs: Any) -> Any:
            result = stop(*args, **kwargs)
            self._stopped(consumer)
            return result

        consumer.start = start_consumer
        consumer.stop = stop_consumer
        consumer._jobmetrics_attached = True
        return consumer

    def _starting(self, consumer: Any) -> None:
        m = self.metrics
        self._main_pid = os.getpid()
        kind = str(getattr(consumer, "worker_type", "") or "")
        forks = getattr(getattr(consumer, "environment", None), "forks", kind == "process")
        try:
            if forks and self.directory is None:
                self.directory = ensure_directory(m)
            if self.directory is not None:
                self.huey.on_shutdown("jobmetrics_fold_own_file")(self._worker_shutdown)
            workers = getattr(consumer, "workers", None)
            m.set_info(pool=kind or None,
                       workers=workers if isinstance(workers, int) and workers >= 0 else None)
        except Exception as exc:
            _errors.report("huey consumer start", exc)
        self.serve("huey metrics endpoint")

    def _started(self) -> None:
        # After the workers are forked: they never share the reader's connection.
        try:
            sizes = self.metrics.queue_sizes
            if sizes is not None and self._backlog is None:
                self._backlog = _Backlog(self.huey, BACKLOG_WAIT)
                name = sizes.names.admit(str(self.huey.name))
                sizes.register(name, self._backlog, _Backlog.size)
        except Exception as exc:
            _errors.report("huey queue size", exc)

    def _stopped(self, consumer: Any) -> None:
        # A SIGHUP restart exec()s the consumer again: no exit handlers run, so the
        # directory of this start goes now (the next start makes its own).
        if getattr(consumer, "_restart", False) and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _worker_shutdown(self) -> None:
        # A worker process exiting folds its file in (the consumer's threads do not).
        if os.getpid() != self._main_pid:
            fold_own_file(self.directory, "huey worker shutdown")


def instrument(huey: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Instrumentation:
    """Record every task ``huey``'s consumers run, on any worker type, with no decorator.

    Call it where the Huey instance is defined, before its consumer starts (a process
    that only enqueues tasks runs it too: nothing is recorded there). ``metrics`` defaults
    to the process-wide :func:`~jobmetrics.default_metrics`. ``port`` (default
    ``$JOBMETRICS_PORT``; none: do not serve) makes the consumer's main process serve
    ``/metrics`` for all its workers, on ``$JOBMETRICS_ADDR`` when set, else the metrics'
    ``addr``.

    Raises ``TypeError`` when ``huey`` is not a ``huey.Huey`` or ``metrics`` not a
    ``JobMetrics``, ``TypeError``/``ValueError`` for a bad ``port`` or
    ``$JOBMETRICS_PORT``, and ``ValueError`` when ``huey`` is instrumented already.
    """
    from huey import Huey

    if not isinstance(huey, Huey):
        raise TypeError(f"huey must be a huey.Huey instance, got {type(huey).__name__}")
    inst = Instrumentation(huey, metrics, port)
    if getattr(huey, "_jobmetrics", None) is not None:
        raise ValueError("this Huey instance is instrumented already: call instrument() once")
    huey._jobmetrics = inst
    huey.signal(*_SIGNALS)(inst.receive)
    create_consumer: Callable[..., Any] = huey.create_consumer

    def create(**options: Any) -> Any:
        return inst.attach(create_consumer(**options))

    huey.create_consumer = create
    return inst
