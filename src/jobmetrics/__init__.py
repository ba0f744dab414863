"""Prometheus metrics for Python job services, named as Harbor's jobservice names them.

>>> from jobmetrics import JobMetrics
>>> m = JobMetrics()                      # harbor_jobservice_* on the global registry
>>> @m.task("replication")
... def replicate(src, dst): ...
"""

from __future__ import annotations

from .asgi import ASGIMiddleware
from .core import (
    JobMetrics,
    default_metrics,
    make_asgi_app,
    make_wsgi_app,
    set_default_metrics,
    start_http_server,
)
from .settings import DEFAULT_BUCKETS, DEFAULT_QUANTILES
from .sketch import QuantileSketch
from .summary import QuantileSummary
from .tasks import Stopped, TaskHandle
from .wsgi import WSGIMiddleware

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_QUANTILES",
    "ASGIMiddleware",
    "JobMetrics",
    "QuantileSketch",
    "QuantileSummary",
    "Stopped",
    "TaskHandle",
    "WSGIMiddleware",
    "default_metrics",
    "make_asgi_app",
    "make_wsgi_app",
    "set_default_metrics",
    "start_http_server",
]

__version__ = "0.1.0"
