"""The Prometheus protobuf exposition, encoded by hand: how Prometheus ingests native
histograms, and nothing prometheus_client (0.26) offers.

The format is a stream of ``io.prometheus.client.MetricFamily`` messages (Prometheus's
``prompb/io/prometheus/client/metrics.proto``), each preceded by its length as a varint
(``encoding=delimited``). Every family type prometheus_client yields is encoded, since a
scrape is taken in one format: counter, gauge, summary, histogram (with native buckets
when the family is a :class:`~jobmetrics.durations.NativeHistogramMetric`), gauge
histogram, and info, state set and unknown as gauges (as the text format shows them)
or untyped. ``_created`` samples are left out, as in the text format Prometheus reads.
"""

from __future__ import annotations

import math
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample

from .durations import NativeBuckets, NativeHistogramMetric

__all__ = ["CONTENT_TYPE", "encode", "wants_protobuf"]

#: The Content-Type of the delimited protobuf exposition.
CONTENT_TYPE = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
                "encoding=delimited")

# MetricType enum of metrics.proto.
_COUNTER, _GAUGE, _SUMMARY, _UNTYPED, _HISTOGRAM, _GAUGE_HISTOGRAM = 0, 1, 2, 3, 4, 5
_pack_double = struct.Struct("<d").pack


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:  # int64 fields: two's complement, ten bytes
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_KEYS: Dict[int, bytes] = {}


def _key(number: int, wire: int) -> bytes:
    k = number << 3 | wire
    found = _KEYS.get(k)
    if found is None:
        found = _KEYS[k] = _varint(k)
    return found


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _str(number: int, text: str) -> bytes:
    return _bytes(number, text.encode("utf-8", "surrogatepass"))


def _double(number: int, value: float) -> bytes:
    return _key(number, 1) + _pack_double(value)


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _sint(number: int, value: int) -> bytes:
    # zigzag: sint32/sint64
    return _key(number, 0) + _varint((value << 1) if value >= 0 else ((-value) << 1) - 1)


def _count(value: float) -> int:
    return int(value) if math.isfinite(value) and value > 0 else 0


def _labels(labels: Dict[str, str]) -> bytes:
    return b"".join(_bytes(1, _str(1, k) + _str(2, v)) for k, v in labels.items())


def _timestamp(number: int, seconds: float) -> bytes:
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    body = (_uint(1, whole) if whole else b"") + (_uint(2, nanos) if nanos else b"")
    return _bytes(number, body)


def _exemplar(number: int, ex: Exemplar) -> bytes:
    body = _labels(ex.labels) + _double(2, ex.value)
    if ex.timestamp is not None:
        body += _timestamp(3, float(ex.timestamp))
    return _bytes(number, body)


def _spans(buckets: Sequence[Tuple[int, float]], span: int, delta: int) -> bytes:
    """Spans and count deltas of populated buckets (gaps of one or two empty buckets are
    filled with zeros, as client_golang does: cheaper than a new span)."""
    if not buckets:
        return b""
    spans: List[List[int]] = []  # [offset, length]
    counts: List[int] = []
    prev: Optional[int] = None
    for i, n in buckets:
        if prev is None:
            spans.append([i, 1])
        elif i - prev - 1 <= 2:
            gap = i - prev - 1
            counts.extend([0] * gap)
            spans[-1][1] += gap + 1
        else:
            spans.append([i - prev - 1, 1])
        counts.append(_count(n))
        prev = i
    out = b"".join(_bytes(span, _sint(1, off) + _uint(2, length)) for off, length in spans)
    last = 0
    for c in counts:
        out += _sint(delta, c - last)
        last = c
    return out


def _native(nb: NativeBuckets) -> bytes:
    return (_sint(5, nb.schema) + _double(6, nb.zero_threshold)
            + _uint(7, _count(nb.zero_count))
            + _spans(nb.negative, 9, 10) + _spans(nb.positive, 12, 13))


class _Series:
    __slots__ = ("buckets", "count", "labels", "quantiles", "sum")

    def __init__(self, labels: Dict[str, str]) -> None:
        self.labels = labels
        self.count = 0.0
        self.sum = 0.0
        self.quantiles: List[Tuple[float, float]] = []
        self.buckets: List[Tuple[float, float, Optional[Exemplar]]] = []


def _group(metric: Metric, drop: str) -> Tuple[List[Tuple[_Series, str, Sample]],
                                               List[_Series]]:
    """Samples with the series (labels without ``drop``) each belongs to, and the series
    in order of first appearance."""
    series: Dict[Tuple[Tuple[str, str], ...], _Series] = {}
    out = []
    cut = len(metric.name)
    for sample in metric.samples:
        key = tuple(sorted([kv for kv in sample.labels.items() if kv[0] != drop]))
        s = series.get(key)
        if s is None:
            s = series[key] = _Series(dict(key))
        out.append((s, sample.name[cut:], sample))
    return out, list(series.values())


def _ts(sample: Sample) -> bytes:
    if sample.timestamp is None:
        return b""
    return _sint(6, int(float(sample.timestamp) * 1000))


def _histograms(metric: Metric, kind: int) -> List[bytes]:
    count_suffix, sum_suffix = ("_gcount", "_gsum") if kind == _GAUGE_HISTOGRAM else (
        "_count", "_sum")
    stamps: Dict[int, bytes] = {}
    samples, order = _group(metric, "le")
    for s, suffix, sample in samples:
        if suffix == "_bucket":
            le = sample.labels.get("le", "+Inf")
            s.buckets.append((float(le), sample.value, sample.exemplar))
        elif suffix == count_suffix:
            s.count = sample.value
        elif suffix == sum_suffix:
            s.sum = sample.value
        stamps.setdefault(id(s), _ts(sample))
    native = metric.native if isinstance(metric, NativeHistogramMetric) else {}
    out = []
    for s in order:
        body = _uint(1, _count(s.count)) + _double(2, s.sum)
        for bound, cumulative, ex in s.buckets:
            if bound == math.inf:
                continue  # implied by sample_count
            b = _uint(1, _count(cumulative)) + _double(2, bound)
            if ex is not None:
                b += _exemplar(3, ex)
            body += _bytes(3, b)
        nb = native.get(tuple(sorted(s.labels.items())))
        if nb is not None:
            body += _native(nb)
        out.append(_labels(s.labels) + _bytes(7, body) + stamps.get(id(s), b""))
    return out


def _summaries(metric: Metric) -> List[bytes]:
    samples, order = _group(metric, "quantile")
    for s, suffix, sample in samples:
        if suffix == "":
            s.quantiles.append((float(sample.labels["quantile"]), sample.value))
        elif suffix == "_count":
            s.count = sample.value
        elif suffix == "_sum":
            s.sum = sample.value
    out = []
    for s in order:
        body = _uint(1, _count(s.count)) + _double(2, s.sum) + b"".join(
            _bytes(3, _double(1, q) + _double(2, v)) for q, v in s.quantiles)
        out.append(_labels(s.labels) + _bytes(4, body))
    return out


def _family(name: str, doc: str, kind: int, metrics: List[bytes]) -> bytes:
    body = (_str(1, name) + _str(2, doc) + _uint(3, kind)
            + b"".join(_bytes(4, m) for m in metrics))
    return _varint(len(body)) + body


def _simple(metric: Metric, field: int, skip: Tuple[str, ...] = ()) -> List[bytes]:
    return [_labels(s.labels) + _bytes(field, _double(1, s.value)) + _ts(s)
            for s in metric.samples if not s.name.endswith(skip)]


def encode_family(metric: Metric) -> bytes:
    """One family, delimited (empty bytes for a family without samples)."""
    if not metric.samples:
        return b""
    t, name, doc = metric.type, metric.name, metric.documentation
    if t == "counter":
        totals = [s for s in metric.samples if s.name == name + "_total"]
        return _family(name + "_total", doc, _COUNTER, [
            _labels(s.labels) + _bytes(3, _double(1, s.value)) + _ts(s) for s in totals])
    if t == "gauge":
        return _family(name, doc, _GAUGE, _simple(metric, 2))
    if t == "summary":
        return _family(name, doc, _SUMMARY, _summaries(metric))
    if t == "histogram":
        return _family(name, doc, _HISTOGRAM, _histograms(metric, _HISTOGRAM))
    if t == "gaugehistogram":
        return _family(name, doc, _GAUGE_HISTOGRAM, _histograms(metric, _GAUGE_HISTOGRAM))
    if t == "info":
        return _family(name + "_info", doc, _GAUGE, _simple(metric, 2))
    if t == "stateset":
        return _family(name, doc, _GAUGE, _simple(metric, 2))
    # unknown / untyped (and enum, the text format's gauge-like listing)
    return _family(name, doc, _UNTYPED, _simple(metric, 5, ("_created",)))


def encode(metrics: Iterable[Metric]) -> bytes:
    """The delimited protobuf exposition of ``metrics`` (e.g. ``registry.collect()``)."""
    return b"".join(encode_family(m) for m in metrics)


def wants_protobuf(accept: str) -> bool:
    """Whether an ``Accept`` header prefers the delimited protobuf exposition: it lists
    ``application/vnd.google.protobuf`` with ``proto=io.prometheus.client.MetricFamily``
    and ``encoding=delimited`` at a quality above zero and no lower than any other type's
    (as Prometheus asks when its native-histogram feature is on)."""
    best_other = 0.0
    ours = 0.0
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        params: Dict[str, str] = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if (media == "application/vnd.google.protobuf"
                and params.get("proto") == "io.prometheus.client.MetricFamily"
                and params.get("encoding") == "delimited"):
            ours = max(ours, q)
        elif media:
            best_other = max(best_other, q)
    return ours > 0.0 and ours >= best_other
