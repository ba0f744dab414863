"""Pushing a short-lived job's metrics to a Prometheus Pushgateway when it ends.

A batch job may live for seconds, between two scrapes; the Pushgateway keeps its last
result for Prometheus. What is pushed, and why:

- ``task_total``, ``task_process_time_seconds`` and ``task_success_rate``: what the job
  did and how long it took, the point of pushing;
- ``info``: which node ran it;
- ``batch_last_success_timestamp_seconds``: set only when the block succeeded. Pushes use
  POST (``pushadd``), which replaces the pushed families only, so a failed run keeps the
  time of the last good one, and ``time() - ..._last_success_timestamp_seconds > 86400``
  alerts on a nightly job that stopped succeeding (the Pushgateway adds
  ``push_time_seconds`` per group by itself).

Not pushed: ``running_task``, ``pending_task``, ``http_inflight_requests`` and
``queue_size`` read zero once the job has ended and would go on saying so after the
process is gone, nor the ``process_*``/``python_*`` families of a process that no longer
exists (the Pushgateway documentation warns against both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Type, TypeVar
from urllib.parse import urlsplit

from prometheus_client import pushadd_to_gateway
from prometheus_client.exposition import default_handler
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from .families import FAMILIES, PUSHED
from .redact import redact_url

if TYPE_CHECKING:
    from .service import Service

__all__ = ["PushOnExit"]

logger = logging.getLogger("jobmetrics")

F = TypeVar("F", bound=Callable[..., Any])

class _PushView:
    """A registry-like view: the pushed families of one service, plus the extras."""

    def __init__(self, service: Service, extra: List[Metric]) -> None:
        self._service = service
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        keep = {self._service.table.names[key] for key in PUSHED}
        return [m for m in self._service.collect() if m.name in keep] + self._extra


class PushOnExit:
    """``with m.push_on_exit(gateway, job=...)``: push the job's metrics when the block
    ends, whether it succeeded, failed or was stopped. Also a decorator.

    A failed push is logged (logger ``jobmetrics``) and never raised: the job's own
    result or exception is what the caller sees.
    """

    def __init__(
        self,
        service: Optional[Service],
        gateway: str,
        job: str,
        grouping_key: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = 30.0,
        handler: Callable[..., Any] = default_handler,
    ) -> None:
        if not isinstance(gateway, str) or not gateway:
            raise TypeError("gateway must be a non-empty str such as 'localhost:9091'")
        if not isinstance(job, str) or not job:
            raise ValueError("job must be a non-empty str")
        key = dict(grouping_key or {})
        for k, v in key.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("grouping_key must map str to str")
        self._service = service
        self.gateway = gateway
        self.job = job
        self.grouping_key: Dict[str, str] = key
        self._timeout = timeout
        self._handler = handler
        self.last_error: Optional[BaseException] = None

    def push(self, succeeded: bool) -> bool:
        """Push now; ``succeeded`` adds the last-success timestamp. True if pushed."""
        service = self._service
        if service is None:  # metrics disabled
            return False
        extra: List[Metric] = []
        if succeeded:
            g = GaugeMetricFamily(service.table.names["batch_success"],
                                  FAMILIES["batch_success"].doc)
            g.add_metric((), time.time())
            extra.append(g)
        try:
            pushadd_to_gateway(
                self.gateway,
                job=self.job,
                registry=_PushView(service, extra),
                grouping_key=self.grouping_key,
                timeout=self._timeout,
                handler=self._handler,
            )
        except Exception as exc:  # the job's outcome matters more than its metrics
            self.last_error = exc
            # Never log credentials given in the URL: neither in it nor in the error,
            # which may quote the address it could not parse.
            password = _password(self.gateway)
            message = str(exc) if password is None else str(exc).replace(password, "***")
            logger.error("jobmetrics: push to %s failed: %s", redact_url(self.gateway),
                         message)
            return False
        self.last_error = None
        return True

    def __enter__(self) -> PushOnExit:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.push(succeeded=exc is None)

    def __call__(self, fn: F) -> F:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def _password(gateway: str) -> Optional[str]:
    url = gateway if "://" in gateway else "http://" + gateway  # as prometheus_client
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None
