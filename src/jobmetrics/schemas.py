"""Exponential bucket schemas, as Prometheus's native histograms define them.

Bucket ``i`` of schema ``n`` holds the values ``v`` with ``base**(i-1) < |v| <= base**i``,
``base = 2**(2**-n)``; schema ``n - 1`` merges buckets ``2i - 1`` and ``2i`` of schema
``n`` into its bucket ``i``, so bucket ``i`` of schema ``n`` lies in bucket
``ceil(i / 2**(n-m))`` of any lower schema ``m`` (an exact merge). Prometheus accepts
schemas -4 to 8.

:func:`index` places a value exactly as client_golang does (``math.Frexp`` and a table of
the bucket bounds in ``[0.5, 1)``), so a value on a bound, such as 2.0 or 0.5, lands in the
bucket whose upper bound it is; the logarithm alone puts one in the next bucket up.
:func:`fast_index` takes the logarithm and falls back to :func:`index` only for a value
within rounding of a bound, which keeps the hot path one ``log`` call.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Dict, List, Mapping

__all__ = [
    "MAX_SCHEMA",
    "MIN_SCHEMA",
    "ZERO_THRESHOLD",
    "accuracy",
    "downscale",
    "fast_index",
    "index",
    "schema_for",
]

#: The schemas Prometheus's native histograms accept.
MIN_SCHEMA, MAX_SCHEMA = -4, 8
#: Values whose magnitude is at most this count in the zero bucket of a native histogram
#: (client_golang's ``DefNativeHistogramZeroThreshold``, 2**-128).
ZERO_THRESHOLD = 2.0 ** -128
#: Schemas above this are not Prometheus's; the sketch places values in them by the
#: logarithm alone (no table of 2**n bounds).
_TABLE_LIMIT = 12
_MAX_FLOAT = 1.7976931348623157e308
#: How near an integer ``log(v) / log(base)`` must come before the exact rule decides:
#: far above the logarithm's rounding error (1e-16 relative, times at most ~3e6 for
#: values up to 1e308 at schema 12), far below a bucket.
_EPS = 1e-9
_frexp = math.frexp
_log = math.log
_ceil = math.ceil


def accuracy(schema: int) -> float:
    """The relative error of a bucket's midpoint-in-ratio ``2 * base**i / (base + 1)``
    for any value of the bucket: ``(base - 1) / (base + 1)``."""
    base = float(2.0 ** (2.0 ** -schema))
    return (base - 1.0) / (base + 1.0)


def schema_for(relative_accuracy: float) -> int:
    """The coarsest schema (fewest buckets) whose :func:`accuracy` is at most
    ``relative_accuracy``, but not below -4 (0.01 gives schema 6, accuracy 0.54%)."""
    n = MIN_SCHEMA
    while accuracy(n) > relative_accuracy and n < 52:
        n += 1
    return n


@lru_cache(maxsize=None)  # noqa: UP033
def _bounds(schema: int) -> List[float]:
    # 2**(j / 2**schema) / 2 for j in [0, 2**schema), each rounded *down* to a float: the
    # bound is irrational (but for j = 0), so ``frac <= bound`` holds exactly when
    # ``frac <= rounded down``, and a value lands in the bucket the spec's
    # ``(base**(i-1), base**i]`` gives. (client_golang's table is float arithmetic, one
    # ulp off some bounds: only a value within one ulp of such a bound is placed apart.)
    size = 1 << schema
    out = []
    with localcontext() as ctx:
        ctx.prec = 40
        two = Decimal(2)
        for j in range(size):
            exact = two ** (Decimal(j) / size) / 2
            near = float(exact)
            out.append(near if Decimal(near) <= exact else math.nextafter(near, 0.0))
    return out


def index(magnitude: float, schema: int) -> int:
    """The bucket of a value ``> 0`` (a magnitude; +Inf is in the bucket above the
    largest float's, as client_golang puts it)."""
    if magnitude > _MAX_FLOAT:
        return index(_MAX_FLOAT, schema) + 1
    frac, exp = _frexp(magnitude)
    if schema > 0:
        if schema > _TABLE_LIMIT:
            return _ceil(_log(magnitude) * (1 << schema) / math.log(2.0))
        bounds = _bounds(schema)
        return bisect_left(bounds, frac) + (exp - 1) * len(bounds)
    i = exp - 1 if frac == 0.5 else exp
    shift = -schema
    return (i + (1 << shift) - 1) >> shift


def inverse_log_base(schema: int) -> float:
    """``1 / log(base)`` for :func:`fast_index`."""
    return (1 << schema) / math.log(2.0) if schema >= 0 else 1.0 / (math.log(2.0) * (1 << -schema))


def fast_index(magnitude: float, schema: int, inv_log_base: float) -> int:
    """:func:`index`, by the logarithm where it is certain (``inv_log_base`` is
    :func:`inverse_log_base` of ``schema``)."""
    if magnitude >= _MAX_FLOAT:
        return index(magnitude, schema)
    t = _log(magnitude) * inv_log_base
    k = _ceil(t)
    if _EPS < k - t < 1.0 - _EPS or schema > _TABLE_LIMIT:
        return k
    return index(magnitude, schema)


def representative(k: int, schema: int) -> float:
    """The value bucket ``k`` of ``schema`` reports, ``2 * base**k / (base + 1)`` (the
    point of the bucket whose relative distance to both bounds is the same), capped at
    the largest float. Computed as a mantissa in [1, 2) scaled by ``ldexp``: ``base**k``
    itself would overflow for the top buckets, and underflow into a denormal (losing
    bits before the factor is applied) for the bottom ones."""
    base = 2.0 ** (2.0 ** -schema)
    if schema > 0:
        e, r = divmod(k, 1 << schema)
        mantissa = 2.0 / (base + 1.0) * 2.0 ** (r / (1 << schema))
    else:
        e, mantissa = k << -schema, 2.0 / (base + 1.0)
    try:
        return min(math.ldexp(mantissa, e), _MAX_FLOAT)
    except OverflowError:  # the bucket of the largest floats
        return _MAX_FLOAT


def downscale(buckets: Mapping[int, float], schema: int, to: int) -> Dict[int, float]:
    """The counts of ``buckets`` (of ``schema``) in schema ``to`` (``<= schema``)."""
    shift = schema - to
    if shift == 0:
        return dict(buckets)
    out: Dict[int, float] = {}
    for i, n in buckets.items():
        j = -((-i) >> shift)  # ceil(i / 2**shift), for negative i too
        out[j] = out.get(j, 0.0) + n
    return out
