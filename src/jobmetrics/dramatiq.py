"""Dramatiq: ``broker.add_middleware(JobMetricsMiddleware())`` records every actor run.

``type`` is the actor name. A message that returns is ``success``; one that raises is
``fail`` (and ``task_retries_total`` +1 when the ``Retries`` middleware enqueues it
again); a message skipped (``SkipMessage``, an age limit) or failed by a middleware before
its actor ran is ``stop``; a message nacked without being processed here (no such actor)
is ``stop`` of type ``unknown``. A message with an ETA the worker holds in memory is
pending until it runs (and no longer counts after the worker shuts down, unlike the
gauge of Dramatiq's own middleware).

Under ``dramatiq module --processes N``, each worker process is forked by Dramatiq's main
process, which runs no user code. The worker processes of one start find the same fresh
directory, named after the main process and its start time (so a restart never mixes
with the last one), make it if needed, and record into it (:mod:`jobmetrics.forking`); a
small process the main process runs for the middleware (its ``forks``) removes it when
the main process stops. With ``port=`` or ``$JOBMETRICS_PORT`` one worker process (the
holder of the directory's serving lock) serves ``/metrics`` for all of them, on
``$JOBMETRICS_ADDR`` when set; the others wait for the lock, so another takes over if it
dies. A worker run in your own process (``Worker(broker)``)
records into its metrics as they are.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from dramatiq.middleware import Middleware

from . import _errors
from .core import JobMetrics
from .forking import fold_own_file, needs_directory, record_into, start_directory
from .serving import WorkerEndpoint
from .state import FAIL, STOP, SUCCESS, OuterRun, TaskState, outer_run

__all__ = ["JobMetricsMiddleware"]

UNKNOWN = "unknown"
# Exceptions that stop a run on purpose (dramatiq-abort's Abort, a cancellation).
_STOPPED = ("Abort", "Abortable", "CancelledError")

_Run = Tuple[OuterRun, "contextvars.Token[Optional[OuterRun]]", float]


def _under_cli() -> bool:
    """This process is a worker process forked by Dramatiq's command line."""
    return multiprocessing.parent_process() is not None and "dramatiq.cli" in sys.modules


def _janitor() -> int:
    """The process the Dramatiq main process runs for this middleware: it removes the
    start's directory when the main process stops it (SIGTERM) or exits."""
    directory, _ = start_directory("dramatiq", os.getppid())
    try:
        while os.getppid() != 1:
            time.sleep(1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


class JobMetricsMiddleware(Middleware, WorkerEndpoint):
    """Record every actor run of the broker's workers: ``broker.add_middleware(
    JobMetricsMiddleware())``.

    ``metrics`` defaults to the process-wide :func:`~jobmetrics.default_metrics`;
    ``port`` (default ``$JOBMETRICS_PORT``; none: do not serve) makes one worker process
    serve ``/metrics`` for all of them. Raises ``TypeError``/``ValueError`` for a bad
    ``metrics``, ``port`` or ``$JOBMETRICS_PORT``.
    """

    def __init__(self, metrics: Optional[JobMetrics] = None, *,
                 port: Optional[int] = None) -> None:
        WorkerEndpoint.__init__(self, metrics, port)
        self._lock = threading.Lock()
        self._runs: Dict[str, List[_Run]] = {}
        self._pending: Dict[str, TaskState] = {}
        self._done: Set[str] = set()

    @property
    def forks(self) -> List[Callable[[], int]]:
        """Dramatiq runs these in processes of its own: the janitor of the directory."""
        return [_janitor] if _under_cli() else []

    # -- processes ---------------------------------------------------------------

    def after_process_boot(self, broker: Any) -> None:
        try:
            if _under_cli() and needs_directory(self.metrics):
                path, _ = start_directory("dramatiq", os.getppid())
                record_into(self.metrics, path)
                self.directory = path
        except Exception as exc:
            _errors.report("dramatiq process boot", exc)

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.serve_for_start(self.directory, "dramatiq metrics endpoint")

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        fold_own_file(self.directory, "dramatiq worker shutdown")

    # -- messages ----------------------------------------------------------------

    def before_delay_message(self, broker: Any, message: Any) -> None:
        try:
            series = self.metrics.task_series(message.actor_name or UNKNOWN)
            if series is None:
                return
            series.add_pending(1)
            with self._lock:
                self._pending[message.message_id] = series
        except Exception as exc:
            _errors.report("dramatiq delay", exc)

    def before_process_message(self, broker: Any, message: Any) -> None:
        try:
            series = self.metrics.task_series(message.actor_name or UNKNOWN)
            if series is None:
                return
            with self._lock:
                pending = self._pending.pop(message.message_id, None)
            if pending is not None:
                pending.add_pending(-1)
            run = OuterRun(series)
            token = outer_run.set(run)
            start = series.begin()
            with self._lock:
                self._runs.setdefault(message.message_id, []).append((run, token, start))
        except Exception as exc:
            _errors.report("dramatiq before process", exc)

    def _finish(self, message: Any) -> Optional[_Run]:
        with self._lock:
            self._done.add(message.message_id)
            stack = self._runs.get(message.message_id)
            if not stack:
                return None
            found = stack.pop()
            if not stack:
                del self._runs[message.message_id]
        try:
            outer_run.reset(found[1])
        except ValueError:  # pragma: no cover - another context
            outer_run.set(None)
        return found

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Optional[BaseException] = None) -> None:
        try:
            found = self._finish(message)
            if found is None:
                return
            run, _, start = found
            if exception is None:
                # A middleware failed it before the actor ran: it did not run.
                status = STOP if message.failed else SUCCESS
            elif type(exception).__name__ in _STOPPED:
                status = STOP
            else:
                status = FAIL
            run.end(status, start)
        except Exception as exc:
            _errors.report("dramatiq after process", exc)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        try:
            found = self._finish(message)
            if found is not None:
                found[0].end(STOP, found[2])
                return
            series = self.metrics.task_series(message.actor_name or UNKNOWN)
            if series is not None:  # skipped before our before_process_message
                with self._lock:
                    pending = self._pending.pop(message.message_id, None)
                if pending is not None:
                    pending.add_pending(-1)
                series.end(STOP, series.begin())
        except Exception as exc:
            _errors.report("dramatiq skip", exc)

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        # "after" hooks run in reverse order: Retries, added before this middleware,
        # enqueues the failed message again after our after_process_message.
        try:
            if "retries" not in message.options:
                return
            with self._lock:
                ours = message.message_id in self._done
            if ours:
                series = self.metrics.task_series(message.actor_name or UNKNOWN)
                if series is not None:
                    series.retried()
        except Exception as exc:
            _errors.report("dramatiq retry", exc)

    def _left(self, message: Any) -> bool:
        # A delayed message leaves this worker when it comes due: it is enqueued again
        # (any process may take it) and this copy is acked.
        with self._lock:
            seen = message.message_id in self._done
            self._done.discard(message.message_id)
            pending = self._pending.pop(message.message_id, None)
        if pending is not None:
            pending.add_pending(-1)
        return seen

    def after_ack(self, broker: Any, message: Any) -> None:
        try:
            self._left(message)
        except Exception as exc:
            _errors.report("dramatiq ack", exc)

    def after_nack(self, broker: Any, message: Any) -> None:
        try:
            if self._left(message):
                return  # its failure is counted already
            series = self.metrics.task_series(UNKNOWN)
            if series is not None:
                series.end(STOP, series.begin())
        except Exception as exc:
            _errors.report("dramatiq nack", exc)
