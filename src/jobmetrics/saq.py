"""SAQ: every job of a worker counted, with no decorator on each function.

>>> settings = jobmetrics.saq.instrument({
...     "queue": Queue.from_url("redis://localhost"),
...     "functions": [send_mail, ("resize", resize)],
... })

``instrument()`` puts hooks of its own first in the worker's ``before_process``,
``after_process``, ``startup`` and ``shutdown`` (the user's hooks stay, after them).
SAQ's ``Worker.process()`` runs ``before_process`` and ``after_process`` in the task that
takes the job, and creates the job function's task between the two, so the function (and
a sync function in SAQ's thread pool, through its copied context) runs inside the
:class:`~jobmetrics.state.OuterRun` begun by ``before_process``: an inner ``@m.task`` takes
the run over and it is counted once. ``after_process`` runs on every path out of
``process()`` (in its ``finally``), and reads the job's status as SAQ left it:

- ``complete`` -> ``success``; ``failed`` (it raised or timed out, no retry left) ->
  ``fail``;
- ``queued`` with an exception (it raised or timed out, and SAQ queued it again because
  ``job.retries > job.attempts``) -> ``fail`` and ``task_retries_total +1``;
- ``aborted`` (``Job.abort()``) -> ``stop``; ``queued`` with no exception (the worker
  shut down and cancelled it; SAQ queues it again) -> ``stop``; still ``active`` (the
  function swallowed its abort's cancellation, or the worker stopped before the function
  was called) -> ``stop``.

``type`` is the name SAQ looks the function up by (``job.function``: the function's
``__qualname__``, or the name of a ``(name, function)`` entry); a job naming no function
of the worker is ``unknown``. A job's first attempt observes
``queue_wait_seconds{queue=<queue name>}``, from the time it was enqueued (or, when later,
its ``scheduled`` time) to its start.

The queue's backlog, ``Queue.count("queued")`` (jobs ready to run that no worker has
taken), is ``queue_size{queue=<queue name>}``: a task in the worker's event loop reads it
every second and a scrape reports the last value read, so a scrape never waits on the
queue's store. SAQ's worker takes a job only when it starts it, so it reports no
``pending_task``.

Under ``saq module.settings --workers N``, SAQ's main process forks N-1 worker processes
and runs the N-th worker itself; every process imports the settings on its own. As each
worker starts, the processes of one ``saq`` command find (or make) the same private
directory, named after the main process and its start time, and record into it
(:mod:`jobmetrics.forking`). The main process alone serves ``/metrics`` (``port=`` or
``$JOBMETRICS_PORT``, on ``$JOBMETRICS_ADDR`` when set) and publishes ``queue_size``;
each forked process folds its file into the directory's archive as it shuts down, and the
main process removes the directory at its exit, once its children have exited.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import multiprocessing
import os
import shutil
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from saq.job import Status
from saq.worker import Worker
from saq.worker import start as _cli_start

from . import _errors
from .core import JobMetrics
from .forking import fold_own_file, needs_directory, record_into, start_directory
from .serving import WorkerEndpoint
from .state import FAIL, STOP, SUCCESS, OuterRun, QueueSizes, TaskState, outer_run

__all__ = ["UNKNOWN", "instrument"]

#: The type of a job naming no function of the worker: a bounded label.
UNKNOWN = "unknown"
#: Seconds between two reads of the queue's backlog (``queue_size``).
REFRESH_SECONDS = 1.0

_Run = Tuple[OuterRun, "contextvars.Token[Optional[OuterRun]]", float]

# The run begun by before_process in the task that processes one job; after_process runs
# in the same task.
_current: contextvars.ContextVar[Optional[_Run]] = contextvars.ContextVar(
    "jobmetrics_saq_run", default=None)


# -- the processes of one `saq --workers N` command -------------------------------------


def _is_cli_worker(process: Any) -> bool:
    return getattr(process, "_target", None) is _cli_start


def _command_main() -> Optional[int]:
    """The pid of the main process when this one is one of the worker processes of a
    ``saq --workers N`` command (N > 1), else ``None``."""
    if _is_cli_worker(multiprocessing.current_process()):
        parent = multiprocessing.parent_process()
        pid = parent.pid if parent is not None else None
        return pid if pid else os.getppid()
    # The main process forks the others before it imports the settings (and no longer
    # knows their target once they started).
    if "saq.runner" in sys.modules and multiprocessing.active_children():
        return os.getpid()
    return None


def _remove_after_children(path: str, owner: int) -> None:
    # Registered after multiprocessing's own exit handler, so it runs first: wait for
    # the worker processes (as that handler would) before their directory goes.
    if os.getpid() != owner:
        return
    try:
        for p in multiprocessing.active_children():
            if not p.daemon:
                p.join()
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the queue's backlog ------------------------------------------------------------------


class _Backlog:
    """The last ``Queue.count("queued")`` read of one queue, shared by this process's
    workers of that queue (``queue_size`` sums the sources of a name)."""

    __slots__ = ("__weakref__", "size", "users")

    def __init__(self) -> None:
        self.size = 0
        self.users = 0

    @staticmethod
    def read(backlog: _Backlog) -> int:
        return backlog.size


_Key = Tuple[int, str]
# The only strong references to the backlogs: a worker that stops drops its own, and the
# queue leaves the scrape when no worker of it is left (QueueSizes holds them weakly).
_backlogs: Dict[_Key, _Backlog] = {}
_backlogs_lock = threading.Lock()


def _take_backlog(sizes: QueueSizes, name: str) -> _Key:
    key = (id(sizes), name)
    with _backlogs_lock:
        backlog = _backlogs.get(key)
        if backlog is None:
            backlog = _backlogs[key] = _Backlog()
            sizes.register(name, backlog, _Backlog.read)
        backlog.users += 1
    return key


def _drop_backlog(key: _Key) -> None:
    with _backlogs_lock:
        backlog = _backlogs.get(key)
        if backlog is not None:
            backlog.users -= 1
            if backlog.users <= 0:
                del _backlogs[key]


def _set_backlog(key: _Key, size: int) -> None:
    backlog = _backlogs.get(key)
    if backlog is not None:
        backlog.size = size


async def _refresh(queue: Any, key: _Key) -> None:
    # Holds the key, not the backlog: a traceback kept of this task keeps nothing alive.
    while True:
        try:
            _set_backlog(key, int(await queue.count("queued")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store is down: keep the last value read
            _errors.report("saq queue size", exc)
        await asyncio.sleep(REFRESH_SECONDS)


# -- the hooks ----------------------------------------------------------------------------


def _outcome(job: Any, ctx: Dict[str, Any]) -> Tuple[int, bool]:
    """``(status, retried)`` of the attempt that just ended, from the job's status."""
    status = job.status
    failed = ctx.get("exception") is not None
    if status == Status.COMPLETE:
        return SUCCESS, False
    if status == Status.FAILED:
        return FAIL, False
    if status == Status.QUEUED:
        # Queued again: after a failure with retries left, or cancelled at shutdown.
        return (FAIL, True) if failed else (STOP, False)
    if status in (Status.ABORTED, Status.ABORTING):
        return STOP, False
    return (FAIL, False) if failed else (STOP, False)


class _Hooks(WorkerEndpoint):
    """The hooks :func:`instrument` puts first in a worker's settings; ``directory`` is
    the directory of this ``saq`` command's processes, when this process made or found
    one."""

    def __init__(self, metrics: Optional[JobMetrics], port: Optional[int]) -> None:
        super().__init__(metrics, port)
        self._set_up = False
        self._forked = False  # a worker process forked by the saq command's main one
        self._waits: Dict[str, Optional[Callable[[float, float], None]]] = {}
        self._refreshers: weakref.WeakKeyDictionary[Any, Tuple[asyncio.Task[None], _Key]] = (
            weakref.WeakKeyDictionary())

    # -- the worker process ------------------------------------------------------------

    def _set_up_process(self) -> None:
        self._set_up = True
        m = self.metrics
        try:
            main = _command_main()
            if main is not None:
                self._forked = main != os.getpid()
                if needs_directory(m):
                    path, _ = start_directory("saq", main)
                    record_into(m, path)
                    self.directory = path
                    if not self._forked:
                        atexit.register(_remove_after_children, path, os.getpid())
        except Exception as exc:  # this process records into its memory
            _errors.report("saq worker directory", exc)
        if not self._forked:
            self.serve("saq metrics endpoint")

    async def startup(self, ctx: Dict[str, Any]) -> None:
        try:
            if not self._set_up:
                self._set_up_process()
            if self.server is not None:
                ctx["jobmetrics_server"] = self.server
            worker = ctx.get("worker")
            sizes = self.metrics.queue_sizes
            if (worker is None or sizes is None or self._forked
                    or worker in self._refreshers):
                return
            key = _take_backlog(sizes, str(worker.queue.name))
            task = asyncio.get_running_loop().create_task(
                _refresh(worker.queue, key), name="jobmetrics-queue-size")
            self._refreshers[worker] = (task, key)
        except Exception as exc:
            _errors.report("saq startup", exc)

    async def shutdown(self, ctx: Dict[str, Any]) -> None:
        try:
            worker = ctx.get("worker")
            found = self._refreshers.pop(worker, None) if worker is not None else None
            if found is not None:
                task, key = found
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                _drop_backlog(key)
            if self._forked:
                fold_own_file(self.directory, "saq worker shutdown")
        except Exception as exc:
            _errors.report("saq shutdown", exc)

    # -- one job ----------------------------------------------------------------------

    def _state(self, name: str) -> Optional[TaskState]:
        return self.metrics.task_series(name)

    def _wait(self, queue: str) -> Optional[Callable[[float, float], None]]:
        found = self._waits.get(queue, False)
        if found is False:
            waits = self.metrics.queue_waits
            found = self._waits[queue] = (waits.observer(queue) if waits is not None
                                          else None)
        return found  # type: ignore[return-value]

    async def before_process(self, ctx: Dict[str, Any]) -> None:
        try:
            job = ctx.get("job")
            if job is None:
                return
            worker = ctx.get("worker")
            name = job.function
            if not isinstance(name, str) or (worker is not None
                                             and name not in worker.functions):
                name = UNKNOWN
            series = self._state(name)
            if series is None:
                return
            start = series.begin()
            run = OuterRun(series)
            _current.set((run, outer_run.set(run), start))
            if job.attempts <= 1 and job.queued:
                # Both in epoch time: milliseconds for queued/started, seconds for
                # scheduled (the producer's clock: never below 0).
                since = max(job.queued / 1000.0, float(job.scheduled or 0))
                started = job.started / 1000.0 if job.started else time.time()
                wait = self._wait(str(job.get_queue().name))
                if wait is not None:
                    wait(max(0.0, started - since), start)
        except Exception as exc:
            _errors.report("saq before_process", exc)

    async def after_process(self, ctx: Dict[str, Any]) -> None:
        # No await before the recording: a cancellation cannot come in between.
        try:
            found = _current.get()
            if found is None:
                return
            _current.set(None)
            run, token, start = found
            try:
                outer_run.reset(token)
            except (ValueError, RuntimeError):  # pragma: no cover - another context
                outer_run.set(None)
            status, retried = STOP, False
            try:
                job = ctx.get("job")
                if job is not None:
                    status, retried = _outcome(job, ctx)
            except Exception as exc:  # a job not as SAQ makes them: end the run all the same
                _errors.report("saq job status", exc)
            if retried:
                run.state.retried()
            run.end(status, start)
        except Exception as exc:
            _errors.report("saq after_process", exc)


_HOOKS = ("before_process", "after_process", "startup", "shutdown")


def _as_list(hooks: Any, what: str) -> List[Any]:
    if hooks is None:
        return []
    if callable(hooks):
        return [hooks]
    if isinstance(hooks, (str, bytes)) or not hasattr(hooks, "__iter__"):
        raise TypeError(f"{what} must be a callable or a collection of callables, got "
                        f"{type(hooks).__name__}")
    return list(hooks)


def _ours(hook: Any) -> bool:
    return isinstance(getattr(hook, "__self__", None), _Hooks)


def instrument(target: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Any:
    """Record every job of a SAQ worker; returns ``target``.

    ``target`` is the worker settings dict ``saq module.settings`` loads (``functions``,
    ``queue``, ``before_process``, ...), before the worker is made from it, or a
    ``saq.Worker``. Its ``before_process``, ``after_process``, ``startup`` and
    ``shutdown`` hooks get one of ours first each; the user's own stay after it.
    ``metrics`` defaults to :func:`jobmetrics.default_metrics`. ``port`` (default
    ``$JOBMETRICS_PORT``; none: do not serve) serves ``/metrics`` from the worker as it
    starts, on ``$JOBMETRICS_ADDR`` or the metrics' ``addr``; under ``saq --workers N``
    the main process serves for all of them.

    Raises ``TypeError`` for a target that is neither, a bad ``metrics`` or a bad hook
    setting, ``ValueError`` for a bad ``port`` or ``$JOBMETRICS_PORT``, a target with no
    functions, or one instrumented already.
    """
    hooks = _Hooks(metrics, port)
    if isinstance(target, Worker):
        if not target.functions:
            raise ValueError("target has no functions to instrument")
        settings: Dict[str, Any] = {}
        for name in _HOOKS:
            settings[name] = getattr(target, name)
    elif isinstance(target, dict):
        if not target.get("functions") and not target.get("cron_jobs"):
            raise ValueError("target has no functions or cron_jobs to instrument")
        settings = target
    else:
        raise TypeError("target must be a SAQ worker settings dict or a saq.Worker, got "
                        f"{type(target).__name__}")
    lists = {name: _as_list(settings.get(name), name) for name in _HOOKS}
    if any(_ours(h) for h in lists["before_process"]):
        raise ValueError("this SAQ worker is instrumented already: call instrument() once")
    for name in _HOOKS:
        # Ours first: a user's hook that raises stops the ones after it.
        value = [getattr(hooks, name), *lists[name]]
        if isinstance(target, Worker):
            setattr(target, name, value)
        else:
            target[name] = value
    return target
