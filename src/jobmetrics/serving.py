"""What every job-framework integration keeps: the metrics it records into and the
``/metrics`` endpoint its worker serves.

An integration is made where the application is defined, often before anything chose
the process-wide default metrics, so ``metrics`` is resolved on first use. The worker
serves when ``port=`` is given or ``$JOBMETRICS_PORT`` is set, on ``$JOBMETRICS_ADDR`` or
the metrics' ``addr``; a failure to serve (the port taken) is logged once and never
stops the worker. A worker whose processes each run the integration (Dramatiq's,
Taskiq's command lines) serves from one of them: the one holding the start directory's
lock (:func:`jobmetrics.forking.serve_when_locked`).
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Tuple

from . import _errors
from .core import JobMetrics, check_metrics, default_metrics
from .forking import serve_when_locked
from .settings import env_addr, serve_port

__all__ = ["WorkerEndpoint"]


class WorkerEndpoint:
    """The metrics an integration records into and the endpoint its worker serves.

    Raises ``TypeError`` for a ``metrics`` that is not a :class:`~jobmetrics.JobMetrics`,
    ``TypeError``/``ValueError`` for a bad ``port`` or ``$JOBMETRICS_PORT``.

    Attributes:
        port: the port to serve ``/metrics`` on, or ``None`` (do not serve).
        directory: the multi-process directory the worker records into, when the
            integration made or found one, else ``None``.
        server: ``(server, thread)`` once this process serves ``/metrics``, else ``None``.
    """

    def __init__(self, metrics: Optional[JobMetrics], port: Optional[int]) -> None:
        self._metrics = check_metrics(metrics)
        self.port = serve_port(port)
        self.directory: Optional[str] = None
        self.server: Optional[Tuple[Any, threading.Thread]] = None
        self._serving: Optional[threading.Thread] = None

    @property
    def metrics(self) -> JobMetrics:
        """The ``JobMetrics`` recorded into (the process default unless given)."""
        m = self._metrics
        if m is None:
            m = self._metrics = default_metrics()
        return m

    def serve(self, where: str) -> bool:
        """Serve ``/metrics`` from this process, once; whether it does (failures are
        logged once as ``where``)."""
        if self.server is not None:
            return True
        if self.port is None:
            return False
        try:
            m = self.metrics
            self.server = m.start_http_server(self.port, addr=env_addr(m.addr))
            return True
        except Exception as exc:
            _errors.report(where, exc)
            return False

    def serve_for_start(self, directory: Optional[str], where: str) -> None:
        """Serve from one process of a worker's start: this one at once without a
        ``directory``, else the one holding the directory's serve lock (the others wait
        and take over if it dies)."""
        if self.port is None or self.server is not None or self._serving is not None:
            return
        if directory is None:
            self.serve(where)
        else:
            self._serving = serve_when_locked(directory, lambda: self.serve(where), where)
