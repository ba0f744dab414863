"""A test-side decoder of the delimited Prometheus protobuf exposition, written from
metrics.proto's field numbers independently of jobmetrics.protobuf."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

Fields = Dict[int, List[object]]


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def fields(data: bytes) -> Fields:
    """Every field of one message: number -> values (ints for varints, bytes for
    length-delimited, floats for fixed64)."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: object
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value = data[pos:pos + n]
            pos += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _one(f: Fields, n: int, default: object = None) -> object:
    values = f.get(n)
    return values[-1] if values else default


def _str(f: Fields, n: int) -> str:
    v = _one(f, n, b"")
    assert isinstance(v, bytes)
    return v.decode()


def _f(f: Fields, n: int) -> float:
    v = _one(f, n, 0.0)
    assert isinstance(v, float)
    return v


def _i(f: Fields, n: int) -> int:
    v = _one(f, n, 0)
    assert isinstance(v, int)
    return v


@dataclass
class Histogram:
    count: int
    sum: float
    buckets: List[Tuple[float, int]]  # (upper bound, cumulative), +Inf left out
    schema: Optional[int] = None
    zero_threshold: float = 0.0
    zero_count: int = 0
    positive: Dict[int, int] = field(default_factory=dict)
    negative: Dict[int, int] = field(default_factory=dict)
    exemplars: List[Tuple[float, Dict[str, str]]] = field(default_factory=list)


@dataclass
class Series:
    labels: Dict[str, str]
    value: Optional[float] = None  # counter, gauge, untyped
    quantiles: List[Tuple[float, float]] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0
    histogram: Optional[Histogram] = None


@dataclass
class Family:
    name: str
    help: str
    type: int
    series: List[Series]


def _buckets(f: Fields, span: int, delta: int) -> Dict[int, int]:
    out: Dict[int, int] = {}
    deltas = [_zigzag(d) for d in f.get(delta, [])]  # type: ignore[arg-type]
    counts: List[int] = []
    c = 0
    for d in deltas:
        c += d
        counts.append(c)
    k = 0
    i = 0
    for raw in f.get(span, []):
        s = fields(raw)  # type: ignore[arg-type]
        i += _zigzag(_i(s, 1))
        for _ in range(_i(s, 2)):
            if counts[k]:
                out[i] = counts[k]
            k += 1
            i += 1
    assert k == len(counts), "spans and deltas disagree"
    return out


def _labels(f: Fields) -> Dict[str, str]:
    out = {}
    for raw in f.get(1, []):
        lp = fields(raw)  # type: ignore[arg-type]
        out[_str(lp, 1)] = _str(lp, 2)
    return out


def _histogram(raw: bytes) -> Histogram:
    h = fields(raw)
    buckets = []
    exemplars = []
    for b in h.get(3, []):
        bf = fields(b)  # type: ignore[arg-type]
        buckets.append((_f(bf, 2), _i(bf, 1)))
        if 3 in bf:
            ef = fields(bf[3][0])  # type: ignore[arg-type]
            exemplars.append((_f(ef, 2), _labels(ef)))
    out = Histogram(_i(h, 1), _f(h, 2), buckets, exemplars=exemplars)
    if 5 in h or 12 in h or 7 in h:
        out.schema = _zigzag(_i(h, 5))
        out.zero_threshold = _f(h, 6)
        out.zero_count = _i(h, 7)
        out.positive = _buckets(h, 12, 13)
        out.negative = _buckets(h, 9, 10)
    return out


def decode(data: bytes) -> Dict[str, Family]:
    """Every family of a delimited stream, by name."""
    out: Dict[str, Family] = {}
    pos = 0
    while pos < len(data):
        n, pos = _varint(data, pos)
        mf = fields(data[pos:pos + n])
        pos += n
        series = []
        for raw in mf.get(4, []):
            m = fields(raw)  # type: ignore[arg-type]
            s = Series(_labels(m))
            for number in (2, 3, 5):  # gauge, counter, untyped
                if number in m:
                    s.value = _f(fields(m[number][0]), 1)  # type: ignore[arg-type]
            if 4 in m:
                sm = fields(m[4][0])  # type: ignore[arg-type]
                s.count, s.sum = _i(sm, 1), _f(sm, 2)
                for q in sm.get(3, []):
                    qf = fields(q)  # type: ignore[arg-type]
                    s.quantiles.append((_f(qf, 1), _f(qf, 2)))
            if 7 in m:
                s.histogram = _histogram(m[7][0])  # type: ignore[arg-type]
            series.append(s)
        name = _str(mf, 1)
        assert name not in out, f"family {name} twice"
        out[name] = Family(name, _str(mf, 2), _i(mf, 3), series)
    return out
