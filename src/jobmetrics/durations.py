"""Duration state in cells: a summary with windowed quantiles, a cumulative histogram, or
a cumulative native histogram.

One :class:`Duration` per label set of a duration family. Its cells:

- ``(ALL, COUNT)`` and ``(ALL, SUM)``: since start, summed over every process;
- histogram and native: ``(ALL, BUCKET, i)``, the count of values in bucket ``i`` of the
  ``buckets`` setting (not cumulative): what a text scrape shows;
- native: ``(ALL, NATIVE, code)``, the count of values in one exponential bucket of the
  native schema (``code`` packs ``(sign, index)`` as :func:`sketch_code`, with the zero
  bucket for ``|v| <= 2**-128``), summed over processes: an exact merge, since every
  process places a value by the same rule;
- summary: a :class:`~jobmetrics.window.Window` of sketch buckets ``(WSUM, slot, code)``
  (``code`` packs the sketch's ``(sign, index)``, see :func:`sketch_code`) with the
  bucket's smallest and largest value, from which a scrape builds one merged
  :class:`~jobmetrics.sketch.QuantileSketch` and clamps its quantiles into
  ``[min, max]`` of the window.

The caller holds ``store.lock`` and passes ``perf_counter`` times.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, cast

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .cells import Rule, Store
from .schemas import MAX_SCHEMA, MIN_SCHEMA, ZERO_THRESHOLD, downscale, index, inverse_log_base
from .settings import Settings
from .sketch import QuantileSketch
from .window import Window

# prometheus_client's own label formatting ("0.5", "+Inf", "1e+06"), typed.
_go = cast(Callable[[float], str], floatToGoString)

__all__ = [
    "BUCKET",
    "COUNT",
    "NATIVE",
    "SUM",
    "Duration",
    "NativeBuckets",
    "NativeHistogramMetric",
    "emit_histogram",
    "emit_summary",
    "sketch_code",
    "summary_quantiles",
]

COUNT, SUM, BUCKET, NATIVE = 0, 1, 2, 3
_ALL = int(Rule.ALL)
_log = math.log
_ceil = math.ceil
_MAX_FLOAT = 1.7976931348623157e308
# See schemas.fast_index: the logarithm decides unless it is within rounding of a bound.
_EPS, _ONE_EPS = 1e-9, 1.0 - 1e-9

#: An exemplar: (trace id, value, unix time).
ExemplarData = Tuple[str, float, float]


def sketch_code(value: float, schema: int, inv_log_base: float) -> int:
    """One int for the bucket of ``value`` in ``schema``: ``index * 4 + sign + 1``
    (ints are not tracked by the garbage collector, so recording allocates nothing it
    could collect). ``inv_log_base`` is :func:`~jobmetrics.schemas.inverse_log_base` of
    ``schema``; ``value`` is not NaN; only 0.0 is in the zero bucket."""
    if value > 0.0:
        return _index(value, schema, inv_log_base) * 4 + 2
    if value < 0.0:
        return _index(-value, schema, inv_log_base) * 4
    return 1


def native_code(value: float, schema: int, inv_log_base: float) -> int:
    """:func:`sketch_code` with a native histogram's zero bucket (``|v| <= 2**-128``);
    ``value`` is not NaN."""
    if value > ZERO_THRESHOLD:
        return _index(value, schema, inv_log_base) * 4 + 2
    if value < -ZERO_THRESHOLD:
        return _index(-value, schema, inv_log_base) * 4
    return 1


def _index(magnitude: float, schema: int, inv: float) -> int:
    if magnitude >= _MAX_FLOAT:
        return index(magnitude, schema)
    t = _log(magnitude) * inv
    k = _ceil(t)
    return k if _EPS < k - t < _ONE_EPS else index(magnitude, schema)


class Duration:
    """One label set of a duration family (see the module docstring)."""

    __slots__ = ("_bounds", "_count", "_family", "_inv", "_labels", "_native",
                 "_native_inv", "_native_schema", "_schema", "_store", "_sum", "_window",
                 "buckets", "exemplars")

    def __init__(self, store: Store, family: str, labels: Tuple[str, ...],
                 settings: Settings, kind: str) -> None:
        self._store = store
        self._family = family
        self._labels = labels
        self._bounds: Optional[Tuple[float, ...]] = (
            settings.buckets if kind in ("histogram", "native") else None)
        self._schema = QuantileSketch(settings.relative_accuracy).schema
        self._inv = inverse_log_base(self._schema)
        # Native: code -> cell handle, made on first use (None: not a native histogram).
        self._native: Optional[Dict[int, int]] = {} if kind == "native" else None
        self._native_schema = native_schema(settings)
        self._native_inv = inverse_log_base(self._native_schema)
        self._window: Optional[Window] = None if self._bounds is not None else Window(
            store, family, labels, settings.max_age / settings.age_buckets,
            settings.age_buckets, extremes=True)
        # Per bucket, the latest exemplar; kept in this process only (not a number).
        self.exemplars: Optional[List[Optional[ExemplarData]]] = None
        self.bind()

    def bind(self) -> None:
        """Take this series' cells in the store (again, after a fork)."""
        store, fam, labels = self._store, self._family, self._labels
        self._count = store.cell((fam, labels, (_ALL, COUNT)))
        self._sum = store.cell((fam, labels, (_ALL, SUM)))
        self.buckets: List[int] = []
        if self._bounds is not None:
            self.buckets = [store.cell((fam, labels, (_ALL, BUCKET, i)))
                            for i in range(len(self._bounds) + 1)]
        if self._window is not None:
            self._window.bind()
        if self._native is not None:
            self._native = {}
        self.exemplars = None

    def observe(self, value: float, now: float) -> None:
        """Record one value (seconds) at time ``now``."""
        v = self._store.values
        v[self._count] += 1.0
        v[self._sum] += value
        w = self._window
        if w is None:
            v[self.buckets[bisect_left(self._bounds, value)]] += 1.0  # type: ignore[arg-type]
            native = self._native
            if native is None:
                return
            if ZERO_THRESHOLD < value < _MAX_FLOAT:  # native_code, inlined
                t = _log(value) * self._native_inv
                k = _ceil(t)
                if not _EPS < k - t < _ONE_EPS:
                    k = index(value, self._native_schema)
                code = k * 4 + 2
            elif value == value:  # NaN has no native bucket (as in client_golang)
                code = native_code(value, self._native_schema, self._native_inv)
            else:
                return
            h = native.get(code)
            if h is None:
                h = native[code] = self._store.cell(
                    (self._family, self._labels, (_ALL, NATIVE, code)))
                v = self._store.values  # a new cell may have replaced the values
            v[h] += 1.0
        elif 0.0 < value < _MAX_FLOAT:  # sketch_code, inlined: the hot path of every summary
            t = _log(value) * self._inv
            k = _ceil(t)
            if not _EPS < k - t < _ONE_EPS:
                k = index(value, self._schema)
            w.add_value(k * 4 + 2, value, now)
        elif value == value:  # NaN has no sketch bucket
            w.add_value(sketch_code(value, self._schema, self._inv), value, now)

    def observe_exemplar(self, value: float, now: float, trace_id: str) -> None:
        """:meth:`observe`, keeping ``trace_id`` as the exemplar of the value's bucket
        (histograms only: OpenMetrics has no exemplars on summary quantiles)."""
        self.observe(value, now)
        if self._bounds is None:
            return
        if self.exemplars is None:
            self.exemplars = [None] * (len(self._bounds) + 1)
        self.exemplars[bisect_left(self._bounds, value)] = (trace_id, value, time.time())


def native_schema(settings: Settings) -> int:
    """The schema native histograms record in: the sketch's (the coarsest meeting
    ``relative_accuracy``), at most 8 (Prometheus's finest)."""
    return min(QuantileSketch(settings.relative_accuracy).schema, MAX_SCHEMA)


# ---------------------------------------------------------------------------------
# Reading: from merged cells (see collect.py) to samples.


class NativeBuckets(NamedTuple):
    """One native histogram series, as the protobuf exposition carries it."""

    schema: int
    zero_threshold: float
    zero_count: float
    #: ``(index, count)`` of each populated bucket, in increasing index order.
    positive: List[Tuple[int, float]]
    negative: List[Tuple[int, float]]


class NativeHistogramMetric(Metric):
    """A histogram family whose series also carry native buckets: text and OpenMetrics
    expose its classic samples, the protobuf exposition both (see exposition.py)."""

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation, "histogram")
        #: Native buckets by the series' sorted ``(label, value)`` pairs.
        self.native: Dict[Tuple[Tuple[str, str], ...], NativeBuckets] = {}


def native_buckets(parts: Mapping[Tuple[int, ...], float], settings: Settings
                   ) -> NativeBuckets:
    """A native series from its merged ``(ALL, NATIVE, code)`` cells, at the highest
    schema (at most the recorded one) whose populated buckets, positive and negative
    together (as client_golang counts them), are at most ``native_max_buckets``; -4 if
    none is."""
    schema = native_schema(settings)
    zero = 0.0
    pos: Dict[int, float] = {}
    neg: Dict[int, float] = {}
    for part, n in parts.items():
        if len(part) == 3 and part[0] == _ALL and part[1] == NATIVE and n > 0:
            code = part[2]
            if code == 1:
                zero += n
            else:
                (pos if code % 4 == 2 else neg)[code // 4] = n
    limit = settings.native_max_buckets
    to = schema
    while len(pos) + len(neg) > limit and to > MIN_SCHEMA:
        to -= 1
        pos, neg = downscale(pos, to + 1, to), downscale(neg, to + 1, to)
    return NativeBuckets(to, ZERO_THRESHOLD, zero, sorted(pos.items()), sorted(neg.items()))


def summary_quantiles(parts: Mapping[Tuple[int, ...], float], settings: Settings
                      ) -> List[float]:
    """The quantiles of a summary's merged window cells (``(WSUM, code)``, ``(WMIN,)``,
    ``(WMAX,)``), clamped into the range of values observed in the window."""
    sketch = QuantileSketch(settings.relative_accuracy)
    wsum = int(Rule.WSUM)
    for part, n in parts.items():
        if part[0] == wsum and n > 0:
            code = part[1]
            sketch.add_bucket(code % 4 - 1, code // 4, int(n))
    values = sketch.quantiles(settings.quantiles)
    lo = parts.get((int(Rule.WMIN),), -math.inf)
    hi = parts.get((int(Rule.WMAX),), math.inf)
    if sketch.count and lo <= hi:
        values = [min(max(q, lo), hi) for q in values]
    return values


def histogram_counts(parts: Mapping[Tuple[int, ...], float], n_bounds: int) -> List[float]:
    """Per-bucket (not cumulative) counts of a histogram's merged cells."""
    return [parts.get((_ALL, BUCKET, i), 0.0) for i in range(n_bounds + 1)]


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
    exemplars: Optional[Sequence[Optional[ExemplarData]]] = None,
) -> None:
    """Add one histogram's samples from per-bucket (not cumulative) ``counts``, with each
    bucket's exemplar (OpenMetrics only) if any."""
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


def emit_duration(
    metric: Metric, labels: Dict[str, str], parts: Mapping[Tuple[int, ...], float],
    settings: Settings, exemplars: Optional[Sequence[Optional[ExemplarData]]] = None,
) -> None:
    """Add one duration series' samples, a summary or a histogram as ``metric`` is,
    from its merged cells (and, to a :class:`NativeHistogramMetric`, its native
    buckets)."""
    total = parts.get((_ALL, SUM), 0.0)
    count = parts.get((_ALL, COUNT), 0.0)
    if isinstance(metric, NativeHistogramMetric):
        metric.native[tuple(sorted(labels.items()))] = native_buckets(parts, settings)
    if metric.type == "histogram":
        emit_histogram(metric, labels, settings.buckets,
                       histogram_counts(parts, len(settings.buckets)), total, count,
                       exemplars)
    else:
        emit_summary(metric, labels, settings.quantiles, summary_quantiles(parts, settings),
                     total, count)
