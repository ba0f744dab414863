"""Duration series: a summary with windowed quantiles, or a cumulative histogram.

One object per label set. The owner serialises access and passes ``perf_counter`` times.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .settings import Settings
from .window import SlidingSketch

# prometheus_client's own label formatting ("0.5", "+Inf", "1e+06"), typed.
_go = cast(Callable[[float], str], floatToGoString)

__all__ = [
    "HistogramSeries",
    "SummarySeries",
    "duration_metric",
    "emit_histogram",
    "emit_summary",
    "new_duration",
]


class SummarySeries:
    """``_count`` and ``_sum`` since start, quantiles over the sliding window."""

    __slots__ = ("count", "sum", "window")

    def __init__(self, settings: Settings, now: float) -> None:
        self.count = 0
        self.sum = 0.0
        self.window = SlidingSketch(
            settings.max_age, settings.age_buckets, settings.relative_accuracy, now
        )

    def observe(self, value: float, now: float) -> None:
        self.count += 1
        self.sum += value
        self.window.add(value, now)

    def emit(
        self, metric: Metric, labels: Dict[str, str], quantiles: Sequence[float], now: float
    ) -> None:
        emit_summary(metric, labels, quantiles, self.window.quantiles(quantiles, now),
                     self.sum, self.count)


class HistogramSeries:
    """Cumulative bucket counts, as a Prometheus histogram."""

    __slots__ = ("bounds", "count", "counts", "exemplars", "sum")

    def __init__(self, settings: Settings, now: float) -> None:
        self.bounds = settings.buckets
        self.counts: List[int] = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        # Per bucket, the latest (trace id, value, unix time); created on first use.
        self.exemplars: Optional[List[Optional[Tuple[str, float, float]]]] = None

    def observe(self, value: float, now: float) -> None:
        self.count += 1
        self.sum += value
        self.counts[bisect_left(self.bounds, value)] += 1

    def observe_exemplar(self, value: float, now: float, trace_id: str) -> None:
        """``observe``, keeping ``trace_id`` as the exemplar of the value's bucket."""
        self.observe(value, now)
        if self.exemplars is None:
            self.exemplars = [None] * len(self.counts)
        self.exemplars[bisect_left(self.bounds, value)] = (trace_id, value, time.time())

    def emit(
        self, metric: Metric, labels: Dict[str, str], quantiles: Sequence[float], now: float
    ) -> None:
        emit_histogram(metric, labels, self.bounds, self.counts, self.sum, self.count,
                       self.exemplars)


def emit_summary(
    metric: Metric, labels: Dict[str, str], quantiles: Sequence[float],
    values: Sequence[float], total: float, count: float,
) -> None:
    """Add one summary's samples: a quantile each, ``_sum``, ``_count``."""
    name = metric.name
    for q, v in zip(quantiles, values):
        metric.add_sample(name, {**labels, "quantile": _go(q)}, v)
    metric.add_sample(name + "_sum", labels, float(total))
    metric.add_sample(name + "_count", labels, float(count))


def emit_histogram(
    metric: Metric, labels: Dict[str, str], bounds: Sequence[float],
    counts: Sequence[float], total: float, count: float,
    exemplars: Optional[Sequence[Optional[Tuple[str, float, float]]]] = None,
) -> None:
    """Add one histogram's samples from per-bucket (not cumulative) ``counts``, with each
    bucket's exemplar (``(trace id, value, unix time)``, OpenMetrics only) if any."""
    name = metric.name
    acc = 0.0
    for i, (bound, n) in enumerate(zip((*bounds, math.inf), counts)):
        acc += n
        ex = exemplars[i] if exemplars is not None else None
        metric.add_sample(name + "_bucket", {**labels, "le": _go(bound)}, acc,
                          exemplar=None if ex is None else
                          Exemplar({"trace_id": ex[0]}, ex[1], ex[2]))
    metric.add_sample(name + "_count", labels, float(count))
    metric.add_sample(name + "_sum", labels, float(total))


DurationSeries = Union[SummarySeries, HistogramSeries]


def new_duration(settings: Settings, kind: str, now: float) -> DurationSeries:
    """A fresh series of ``kind`` ("summary" or "histogram")."""
    if kind == "histogram":
        return HistogramSeries(settings, now)
    return SummarySeries(settings, now)


def duration_metric(name: str, documentation: str, kind: str) -> Metric:
    """An empty family of ``kind`` to add samples to."""
    return Metric(name, documentation, kind)
