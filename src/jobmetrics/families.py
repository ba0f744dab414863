"""Names, types, labels and help texts of the families: one table for every collector."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)

from .durations import duration_metric
from .settings import Settings

__all__ = ["FAMILIES", "family_names", "new_family"]

#: key -> (name after the prefix, type, labels, help). Counters are named without
#: ``_total`` and info without ``_info``: prometheus_client's exposition adds them.
FAMILIES: Dict[str, Tuple[str, str, Tuple[str, ...], str]] = {
    "inflight": ("http_inflight_requests", "gauge", (),
                 "Number of HTTP requests being served now."),
    "requests": ("http_request", "counter", ("method", "code", "operation"),
                 "Total number of finished HTTP requests."),
    "request_duration": ("http_request_duration_seconds", "http_duration", (),
                         "HTTP request latency in seconds, from the first byte of the request "
                         "to the last byte of the response."),
    "tasks": ("task", "counter", ("type", "status"),
              "Total number of finished tasks by type and status."),
    "process_time": ("task_process_time_seconds", "task_duration", (),
                     "Task run time in seconds by type and status."),
    "success_rate": ("task_success_rate", "gauge", ("type",),
                     "Share of tasks that succeeded, success / (success + fail), among those "
                     "finished within the success-rate window; NaN when none finished in it."),
    "running": ("running_task", "gauge", ("type",), "Number of tasks executing now."),
    "pending": ("pending_task", "gauge", ("type",),
                "Number of tasks accepted but not yet started."),
    "queue_size": ("queue_size", "gauge", ("queue",),
                   "Number of items in an instrumented queue."),
    "info": ("", "info", (), "The node, worker pool and worker count serving."),
}


def family_names(prefix: str) -> Dict[str, str]:
    """``key -> full family name`` for a prefix such as ``"harbor_jobservice_"``."""
    return {key: (prefix + spec[0]) if spec[0] else prefix.rstrip("_")
            for key, spec in FAMILIES.items()}


def new_family(key: str, names: Dict[str, str], settings: Settings) -> Any:
    """An empty family, ready for ``add_metric`` (or ``add_sample`` for durations).

    Typed ``Any``: it is a Counter/Gauge/InfoMetricFamily or a plain ``Metric``,
    according to the table, and the callers know which by the key they pass.
    """
    _, kind, labels, doc = FAMILIES[key]
    name = names[key]
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    if kind == "info":
        return InfoMetricFamily(name, doc)
    return duration_metric(name, doc, getattr(settings, kind))
