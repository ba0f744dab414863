"""The family table: every family's name, type, labels, help, and how it merges.

One table for every part of jobmetrics: the state objects take their cells' keys and rules
from it, the collector renders from it, the Pushgateway picks from it. ``merge`` says how a
family's values from several processes make one answer:

- ``Merge.ALL``: summed over every process that ever ran (counters);
- ``Merge.LIVE``: summed over the processes alive now (gauges of work in progress);
- ``Merge.DURATION``: ``_count``/``_sum``/buckets summed over all, quantiles from the
  merged sketches of the window (summary) or buckets summed (histogram);
- ``Merge.RATIO``: good and bad outcomes summed over the window, then divided;
- ``Merge.DERIVED``: read from another family's cells (``task_total`` is the
  ``_count`` of ``task_process_time_seconds``);
- ``Merge.SINGLE``: one value for the whole service, not kept in cells (``info``, and
  ``batch_last_success_timestamp_seconds``, which only a push carries).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Tuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .cells import Rule
from .durations import NativeHistogramMetric
from .settings import Settings

__all__ = ["FAMILIES", "Family", "FamilyTable", "Merge"]


class Merge(Enum):
    """How one family's values merge across processes (see the module docstring)."""

    ALL = "sum over all processes"
    LIVE = "sum over live processes"
    DURATION = "sum counts, merge sketches or buckets"
    RATIO = "windowed ratio"
    DERIVED = "derived from another family"
    SINGLE = "single value"


@dataclass(frozen=True)
class Family:
    """One row of the table."""

    #: Name after the prefix. Counters are named without ``_total`` and info without
    #: ``_info``: prometheus_client's exposition adds them.
    suffix: str
    #: ``counter``, ``gauge``, ``info``, or the setting that chooses a duration's kind
    #: (``task_duration``, ``http_duration``).
    type: str
    labels: Tuple[str, ...]
    doc: str
    merge: Merge

    @property
    def rule(self) -> Rule:
        """The rule of this family's plain cells."""
        return Rule.LIVE if self.merge is Merge.LIVE else Rule.ALL


FAMILIES: Dict[str, Family] = {
    "inflight": Family("http_inflight_requests", "gauge", (),
                       "Number of HTTP requests being served now.", Merge.LIVE),
    "requests": Family("http_request", "counter", ("method", "code", "operation"),
                       "Total number of finished HTTP requests.", Merge.ALL),
    "request_duration": Family(
        "http_request_duration_seconds", "http_duration", ("method", "operation"),
        "HTTP request latency in seconds, from the first byte of the request to the last "
        "byte of the response.", Merge.DURATION),
    "tasks": Family("task", "counter", ("type", "status"),
                    "Total number of finished tasks by type and status.", Merge.DERIVED),
    "process_time": Family("task_process_time_seconds", "task_duration", ("type", "status"),
                           "Task run time in seconds by type and status.", Merge.DURATION),
    "success_rate": Family(
        "task_success_rate", "gauge", ("type",),
        "Share of tasks that succeeded, success / (success + fail), among those finished "
        "within the success-rate window; NaN when none finished in it.", Merge.RATIO),
    "retries": Family("task_retries", "counter", ("type",),
                      "Total number of task attempts that ended in a retry (each also counts "
                      "as a failed task).", Merge.ALL),
    "running": Family("running_task", "gauge", ("type",), "Number of tasks executing now.",
                      Merge.LIVE),
    "pending": Family("pending_task", "gauge", ("type",),
                      "Number of tasks accepted but not yet started.", Merge.LIVE),
    "queue_size": Family("queue_size", "gauge", ("queue",),
                         "Number of items in an instrumented queue.", Merge.LIVE),
    "queue_wait": Family("queue_wait_seconds", "task_duration", ("queue",),
                         "Time items waited in an instrumented queue, from put to get, in "
                         "seconds.", Merge.DURATION),
    "info": Family("", "info", ("node", "pool", "workers"),
                   "The node, worker pool and worker count serving.", Merge.SINGLE),
    "batch_success": Family("batch_last_success_timestamp_seconds", "gauge", (),
                            "Unix time at which this batch job last ended in success.",
                            Merge.SINGLE),
}

#: Families a short-lived job pushes to a Pushgateway (see push.py).
PUSHED = ("tasks", "process_time", "success_rate", "retries", "info", "batch_success")


class FamilyTable:
    """The table for one prefix: full names, checked to be distinct as exposed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        prefix = settings.prefix
        self.names: Dict[str, str] = {
            key: (prefix + fam.suffix) if fam.suffix else prefix.rstrip("_")
            for key, fam in FAMILIES.items()}
        exposed: Dict[str, str] = {}
        for key, name in self.names.items():
            kind = FAMILIES[key].type
            shown = name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
            other = exposed.get(shown)
            if other is not None:  # pragma: no cover - a table edit gone wrong
                raise ValueError(f"families {other!r} and {key!r} are both named {shown!r}")
            exposed[shown] = key
        #: full name -> key, to recognise a cell's family.
        self.keys: Dict[str, str] = {name: key for key, name in self.names.items()}

    def kind(self, key: str) -> str:
        """``counter``, ``gauge``, ``info``, ``summary``, ``histogram`` or ``native``."""
        kind = FAMILIES[key].type
        return getattr(self.settings, kind) if kind.endswith("_duration") else kind

    def new(self, key: str) -> Metric:
        """An empty family of any kind (for ``describe``)."""
        kind = self.kind(key)
        if kind == "counter":
            return self.counter(key)
        if kind == "gauge":
            return self.gauge(key)
        if kind == "info":
            return self.info(key)
        return self.duration(key)

    def counter(self, key: str) -> CounterMetricFamily:
        """An empty counter family, ready for ``add_metric``."""
        return CounterMetricFamily(self.names[key], FAMILIES[key].doc,
                                   labels=FAMILIES[key].labels)

    def gauge(self, key: str) -> GaugeMetricFamily:
        """An empty gauge family, ready for ``add_metric``."""
        return GaugeMetricFamily(self.names[key], FAMILIES[key].doc,
                                 labels=FAMILIES[key].labels)

    def info(self, key: str) -> InfoMetricFamily:
        """An empty info family, ready for ``add_metric``."""
        return InfoMetricFamily(self.names[key], FAMILIES[key].doc)

    def duration(self, key: str) -> Metric:
        """An empty summary, histogram or native histogram family (as configured), ready
        for ``add_sample``."""
        kind = self.kind(key)
        if kind == "native":
            return NativeHistogramMetric(self.names[key], FAMILIES[key].doc)
        return Metric(self.names[key], FAMILIES[key].doc, kind)

    def window(self, key: str) -> float:
        """The age-bucket width of a windowed family, in seconds."""
        s = self.settings
        if FAMILIES[key].merge is Merge.RATIO:
            return s.success_rate_window / s.age_buckets
        return s.max_age / s.age_buckets
