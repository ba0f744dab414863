"""Celery: one call instruments every task of every worker of an app, on any pool.

``jobmetrics.celery.instrument(app)``, where the app is defined, connects Celery's
signals. Where each one fires decides what it records:

- in the process that runs the task (a prefork child, a thread of the main process, the
  main process itself for ``solo``): ``task_prerun`` marks it running, ``task_postrun``
  ends it with its state (``SUCCESS`` -> ``success``; ``FAILURE`` -> ``fail``;
  ``RETRY`` -> ``fail`` and ``task_retries_total`` +1; ``REJECTED``/``IGNORED`` ->
  ``stop``);
- in the worker's main process: ``task_received`` makes the task pending (prefetched,
  and ETA/countdown tasks the worker holds), the request's ``on_accepted`` (the pool took
  it) ends pending; ``task_revoked`` (revoked, terminated, expired) is ``stop``;
  ``task_unknown``/``task_rejected`` (a message no task can run) is ``stop`` of type
  ``unknown``; ``task_failure`` with ``WorkerLostError``/``TimeLimitExceeded`` (the
  child died, so it never sent ``task_postrun``) is ``fail``.

Where the pool forks (``prefork``) and the metrics record into this process's memory,
the worker's main process gives them a fresh multi-process directory of their own as it
starts (:mod:`jobmetrics.forking`), so the main process answers for every child. With
``port=`` or ``JOBMETRICS_PORT`` it serves ``/metrics`` itself.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Dict, Optional, Tuple

from . import _errors
from .core import JobMetrics
from .forking import ensure_directory, fold_own_file
from .serving import WorkerEndpoint
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run

__all__ = ["Instrumentation", "instrument"]

#: The type of tasks a worker cannot run (unregistered, undecodable): a bounded label.
UNKNOWN = "unknown"

_STATUS = {"SUCCESS": SUCCESS, "FAILURE": FAIL, "RETRY": FAIL, "REJECTED": STOP,
           "IGNORED": STOP}
# Failures the main process reports for a child that died before it could.
_DIED = ("WorkerLostError", "TimeLimitExceeded")
_FORKING_POOLS = ("prefork", "processes")

_Run = Tuple[str, OuterRun, "contextvars.Token[Optional[OuterRun]]", float]

# The runs begun in this context (thread, greenlet), innermost last: task_prerun and
# task_postrun of one attempt fire in the same context, while a retry of the same task id
# may start in another thread before the attempt that retried it has ended.
_runs_here: contextvars.ContextVar[Tuple[_Run, ...]] = contextvars.ContextVar(
    "jobmetrics_celery_runs", default=())


class Instrumentation(WorkerEndpoint):
    """What :func:`instrument` connected to one app (returned for inspection and tests).

    ``directory`` is the multi-process directory this worker made as it started (a
    prefork pool with metrics in memory), else ``None``; ``server`` the ``/metrics``
    endpoint the main process serves (:class:`~jobmetrics.serving.WorkerEndpoint`).
    """

    def __init__(self, app: Any, metrics: Optional[JobMetrics], port: Optional[int]) -> None:
        super().__init__(metrics, port)
        self.app = app
        self._lock = threading.Lock()
        # Task ids running in this process (how many runs of each).
        self._running: Dict[str, int] = {}
        # Main process: received, not yet accepted by the pool.
        self._pending: Dict[str, TaskState] = {}

    def _series(self, task_type: str) -> Optional[TaskState]:
        return self.metrics.task_series(task_type or UNKNOWN)

    def _ours(self, task: Any) -> bool:
        return getattr(task, "_app", None) is self.app or getattr(task, "app", None) is self.app

    # -- the worker's main process ---------------------------------------------------

    def worker_init(self, sender: Any = None, **_: Any) -> None:
        app: Any = self.app
        if id(getattr(sender, "app", None)) != id(app):
            return
        m = self.metrics
        pool: Any = getattr(sender, "pool_cls", None)
        if not pool:
            pool = app.conf.worker_pool
        name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        name = name.rsplit(".", 1)[-1] if not isinstance(pool, str) else name
        try:
            if any(p in str(name) for p in _FORKING_POOLS):
                self.directory = ensure_directory(m)
            m.set_info(pool=str(name))
        except Exception as exc:
            _errors.report("celery worker_init", exc)
        self.serve("celery metrics endpoint")

    def received(self, request: Any = None, **_: Any) -> None:
        try:
            if not isinstance(request, _RequestBase) or request._jobmetrics is not self:
                return  # a task with a Request class of its own: not tracked as pending
            series = self._series(request.name)
            if series is None:
                return
            series.add_pending(1)
            with self._lock:
                self._pending[request.id] = series
        except Exception as exc:
            _errors.report("celery task_received", exc)

    def accepted(self, task_id: str) -> None:
        with self._lock:
            series = self._pending.pop(task_id, None)
        if series is not None:
            series.add_pending(-1)

    def revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        try:
            if not self._ours(sender):
                return
            task_id = getattr(request, "id", None)
            with self._lock:
                pending = self._pending.pop(task_id, None) if task_id else None
            if pending is not None:
                pending.add_pending(-1)
            self._stopped(getattr(sender, "name", None) or UNKNOWN)
        except Exception as exc:
            _errors.report("celery task_revoked", exc)

    def _stopped(self, task_type: str) -> None:
        # Not running here: a revoked task never started, a terminated one ran in a
        # child that is gone (its running count went with it).
        series = self._series(task_type)
        if series is not None:
            series.end(STOP, series.begin())

    def unknown(self, **_: Any) -> None:
        try:
            self._stopped(UNKNOWN)
        except Exception as exc:
            _errors.report("celery task_unknown", exc)

    def failure(self, sender: Any = None, task_id: Optional[str] = None,
                exception: Optional[BaseException] = None, **_: Any) -> None:
        try:
            if type(exception).__name__ not in _DIED or not self._ours(sender):
                return
            here = bool(task_id and self._running.get(task_id))
            if not here:  # the child that ran it died before task_postrun
                series = self._series(getattr(sender, "name", "") or UNKNOWN)
                if series is not None:
                    series.end(FAIL, series.begin())
        except Exception as exc:
            _errors.report("celery task_failure", exc)

    # -- where the task runs ---------------------------------------------------------

    def prerun(self, sender: Any = None, task_id: Optional[str] = None, **_: Any) -> None:
        try:
            if not self._ours(sender) or task_id is None:
                return
            series = self._series(sender.name)
            if series is None:
                return
            run = OuterRun(series)
            token = outer_run.set(run)
            start = series.begin()
            _runs_here.set((*_runs_here.get(), (task_id, run, token, start)))
            with self._lock:
                self._running[task_id] = self._running.get(task_id, 0) + 1
        except Exception as exc:
            _errors.report("celery task_prerun", exc)

    def postrun(self, sender: Any = None, task_id: Optional[str] = None,
                state: Optional[str] = None, **_: Any) -> None:
        try:
            stack = _runs_here.get()
            k = len(stack) - 1
            while k >= 0 and stack[k][0] != task_id:
                k -= 1
            if k < 0:
                return
            run, token, start = stack[k][1:]
            _runs_here.set(stack[:k] + stack[k + 1:])
            with self._lock:
                left = self._running.get(task_id, 1) - 1  # type: ignore[arg-type]
                if left > 0:
                    self._running[task_id] = left  # type: ignore[index]
                else:
                    self._running.pop(task_id, None)  # type: ignore[arg-type]
            try:
                outer_run.reset(token)
            except (ValueError, RuntimeError):  # pragma: no cover - not the innermost
                outer_run.set(None)
            status = _STATUS.get(state or "", FAIL)
            if state == "RETRY":
                run.state.retried()
            run.end(status, start)
        except Exception as exc:
            _errors.report("celery task_postrun", exc)

    def process_shutdown(self, **_: Any) -> None:
        # A prefork child exiting on its own folds its file in now (see multiprocess).
        fold_own_file(self.directory, "celery worker_process_shutdown")


class _RequestBase:
    """Marker of the request classes :func:`instrument` installs."""

    _jobmetrics: Instrumentation
    id: str
    name: str


def _request_class(base: type, inst: Instrumentation) -> type:
    """``base`` (the app's worker request class) telling ``inst`` when the pool takes a
    request: Celery sends no signal then, and only the main process sees it."""

    def on_accepted(self: Any, pid: Any, time_accepted: float) -> None:
        try:
            inst.accepted(self.id)
        except Exception as exc:
            _errors.report("celery on_accepted", exc)
        base.on_accepted(self, pid, time_accepted)  # type: ignore[attr-defined]

    return type(base.__name__, (base, _RequestBase),
                {"on_accepted": on_accepted, "_jobmetrics": inst,
                 "__module__": base.__module__, "__qualname__": base.__qualname__})


def instrument(app: Any, metrics: Optional[JobMetrics] = None, *,
               port: Optional[int] = None) -> Instrumentation:
    """Record every task of ``app``'s workers, on any pool, with no decorator.

    Call it once where the app is defined (a process that only sends tasks imports it
    too: nothing is recorded there). ``metrics`` defaults to the process-wide
    :func:`~jobmetrics.default_metrics`. A prefork worker whose metrics record into
    memory gives them a fresh multi-process directory as it starts (before it forks),
    removed when the worker exits. ``port`` (default ``$JOBMETRICS_PORT``; none: do not
    serve) makes the worker's main process serve ``/metrics`` for every child, on
    ``$JOBMETRICS_ADDR`` when set, else the metrics' ``addr``.

    Raises ``TypeError``/``ValueError`` for a bad ``metrics``, ``port`` or
    ``$JOBMETRICS_PORT``, and ``ValueError`` when ``app`` is instrumented already.
    """
    from celery import signals
    from kombu.utils.imports import symbol_by_name

    inst = Instrumentation(app, metrics, port)
    if not hasattr(app, "Task") or not hasattr(app, "conf"):
        raise TypeError(f"app must be a Celery app, got {type(app).__name__}")
    task_cls = app.Task
    base = symbol_by_name(task_cls.Request)  # type: ignore[no-untyped-call]
    if isinstance(base, type) and issubclass(base, _RequestBase):
        raise ValueError("this Celery app is instrumented already: call instrument() once")
    task_cls.Request = _request_class(base, inst)
    signals.worker_init.connect(inst.worker_init, weak=False)
    signals.task_received.connect(inst.received, weak=False)
    signals.task_revoked.connect(inst.revoked, weak=False)
    signals.task_unknown.connect(inst.unknown, weak=False)
    signals.task_rejected.connect(inst.unknown, weak=False)
    signals.task_failure.connect(inst.failure, weak=False)
    signals.task_prerun.connect(inst.prerun, weak=False)
    signals.task_postrun.connect(inst.postrun, weak=False)
    signals.worker_process_shutdown.connect(inst.process_shutdown, weak=False)
    return inst
