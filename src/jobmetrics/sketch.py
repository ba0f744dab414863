"""A mergeable quantile sketch with a relative-error guarantee (DDSketch), whose buckets
are those of a Prometheus native-histogram schema.

Values are counted in logarithmically spaced buckets: bucket ``i`` holds the values in
``(base**(i-1), base**i]`` with ``base = 2**(2**-n)``, bucket ``i`` of native-histogram
schema ``n`` (:mod:`jobmetrics.schemas`). The schema is the coarsest whose accuracy
``a' = (base - 1) / (base + 1)`` is at most the ``relative_accuracy`` asked for (0.01
gives schema 6: base 1.0109, ``a'`` = 0.54%). A bucket reports ``2 * base**i / (base + 1)``
for any of its values, which is within ``a' * |x|`` of every ``x`` in it. Hence, for any
quantile ``q``, the estimate ``v`` and the exact ``q``-quantile ``x`` of the values seen
(the element of rank ``floor(q * (n - 1))`` in sorted order) satisfy
``|v - x| <= a' * |x| <= relative_accuracy * |x|``.

Two sketches of one schema merge by adding bucket counts, and the merge is exactly the
sketch of the union, so quantiles stay right across worker processes; a sketch's buckets
also merge exactly into any lower schema (bucket ``i`` into ``ceil(i / 2**(n-m))``).
Memory is bounded by ``max_buckets`` per sign: past it, the buckets of the lowest values
are folded together (the guarantee then holds for quantiles above the folded range; with
the defaults that needs values spanning more than 19 orders of magnitude).

See Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", VLDB 2019.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Dict, List, Tuple

from .schemas import accuracy, fast_index, inverse_log_base, representative, schema_for

__all__ = ["DEFAULT_MAX_BUCKETS", "DEFAULT_RELATIVE_ACCURACY", "QuantileSketch"]

DEFAULT_RELATIVE_ACCURACY = 0.01
DEFAULT_MAX_BUCKETS = 4096


class QuantileSketch:
    """Counts of values in log-spaced buckets; see the module docstring for the guarantee.

    Not synchronised: the owner serialises access (the metrics hold a lock around it).
    """

    __slots__ = ("_inv_log_gamma", "_neg", "_pos", "accuracy", "count", "gamma",
                 "max_buckets", "relative_accuracy", "schema", "zero_count")

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if isinstance(relative_accuracy, bool) or not isinstance(relative_accuracy, (int, float)):
            raise TypeError(
                f"relative_accuracy must be a number, got {type(relative_accuracy).__name__}"
            )
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int):
            raise TypeError(f"max_buckets must be an int, got {type(max_buckets).__name__}")
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be at least 2, got {max_buckets!r}")
        self.relative_accuracy = float(relative_accuracy)
        self.max_buckets = max_buckets
        #: The native-histogram schema of the buckets.
        self.schema = schema_for(self.relative_accuracy)
        #: The guarantee the schema gives (at most ``relative_accuracy``).
        self.accuracy = accuracy(self.schema)
        self.gamma: float = float(2.0 ** (2.0 ** -self.schema))
        self._inv_log_gamma = inverse_log_base(self.schema)
        self._pos: Dict[int, int] = {}
        self._neg: Dict[int, int] = {}
        self.zero_count = 0
        self.count = 0

    def add(self, value: float) -> None:
        """Count one value. NaN is ignored; infinities land in the outermost bucket."""
        if value > 0.0:
            k = fast_index(value, self.schema, self._inv_log_gamma)
            bins = self._pos
        elif value < 0.0:
            k = fast_index(-value, self.schema, self._inv_log_gamma)
            bins = self._neg
        elif value == 0.0:
            self.zero_count += 1
            self.count += 1
            return
        else:  # NaN
            return
        bins[k] = bins.get(k, 0) + 1
        self.count += 1
        if len(bins) > self.max_buckets:
            self._collapse(bins)

    def key(self, value: float) -> Tuple[int, int]:
        """``(sign, index)`` of the bucket ``value`` falls in: sign 1, -1 or 0 (zero);
        ``index`` is the bucket's in the native-histogram schema :attr:`schema`.
        NaN has no bucket: ``ValueError``."""
        if value > 0.0:
            return 1, fast_index(value, self.schema, self._inv_log_gamma)
        if value < 0.0:
            return -1, fast_index(-value, self.schema, self._inv_log_gamma)
        if value == 0.0:
            return 0, 0
        raise ValueError("NaN has no bucket")

    def add_bucket(self, sign: int, index: int, count: int) -> None:
        """Add ``count`` values to the bucket ``(sign, index)`` (see :meth:`key`)."""
        if count <= 0:
            return
        if sign == 0:
            self.zero_count += count
        else:
            bins = self._pos if sign > 0 else self._neg
            bins[index] = bins.get(index, 0) + count
            if len(bins) > self.max_buckets:
                self._collapse(bins)
        self.count += count

    def _collapse(self, bins: Dict[int, int]) -> None:
        # Fold the buckets of the lowest values into one: the smallest magnitudes of the
        # positive values, the largest of the negative ones, so the upper quantiles (the
        # ones alerts use) keep the guarantee whatever the signs.
        keys = sorted(bins, reverse=bins is self._neg)
        excess = len(keys) - self.max_buckets
        target = keys[excess]
        folded = sum(bins.pop(k) for k in keys[:excess])
        bins[target] += folded

    def clear(self) -> None:
        """Forget every value."""
        self._pos.clear()
        self._neg.clear()
        self.zero_count = 0
        self.count = 0

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s counts into this sketch (the sketch of the union)."""
        if other.schema != self.schema:
            raise ValueError(
                "cannot merge sketches of different schemas: relative_accuracy "
                f"({self.relative_accuracy} and {other.relative_accuracy})"
            )
        for src, dst in ((other._pos, self._pos), (other._neg, self._neg)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
            if len(dst) > self.max_buckets:
                self._collapse(dst)
        self.zero_count += other.zero_count
        self.count += other.count

    def copy(self) -> QuantileSketch:
        """An independent copy."""
        new = QuantileSketch(self.relative_accuracy, self.max_buckets)
        new._pos = dict(self._pos)
        new._neg = dict(self._neg)
        new.zero_count = self.zero_count
        new.count = self.count
        return new

    @property
    def bucket_count(self) -> int:
        """Number of non-empty buckets held (memory is proportional to it)."""
        return len(self._pos) + len(self._neg) + (1 if self.zero_count else 0)

    def _value(self, k: int) -> float:
        return representative(k, self.schema)

    def _ordered(self) -> List[Tuple[float, int]]:
        # (representative value, count) in increasing value order.
        out = [(-self._value(k), self._neg[k]) for k in sorted(self._neg, reverse=True)]
        if self.zero_count:
            out.append((0.0, self.zero_count))
        out.extend((self._value(k), self._pos[k]) for k in sorted(self._pos))
        return out

    def quantile(self, q: float) -> float:
        """Estimate of the ``q``-quantile (NaN when empty)."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> List[float]:
        """Estimates for several quantiles in one pass (NaN each when empty)."""
        if self.count == 0:
            return [math.nan] * len(qs)
        ordered = self._ordered()
        ranks = sorted((math.floor(q * (self.count - 1)), i) for i, q in enumerate(qs))
        out = [math.nan] * len(qs)
        seen = 0
        j = 0
        for rank, i in ranks:
            while seen + ordered[j][1] <= rank:
                seen += ordered[j][1]
                j += 1
            out[i] = ordered[j][0]
        return out

    def to_dict(self) -> Dict[str, object]:
        """Plain-data form, for storage or transport between processes."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_buckets": self.max_buckets,
            "pos": {str(k): n for k, n in self._pos.items()},
            "neg": {str(k): n for k, n in self._neg.items()},
            "zero": self.zero_count,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> QuantileSketch:
        """Inverse of :meth:`to_dict`."""
        ra = data["relative_accuracy"]
        mb = data["max_buckets"]
        if not isinstance(ra, float) or not isinstance(mb, int):
            raise ValueError("not a QuantileSketch dict")
        new = cls(ra, mb)
        for key, dst in (("pos", new._pos), ("neg", new._neg)):
            src = data[key]
            if not isinstance(src, dict):
                raise ValueError("not a QuantileSketch dict")
            for k, n in src.items():
                dst[int(k)] = int(n)
        zero = data["zero"]
        if not isinstance(zero, int):
            raise ValueError("not a QuantileSketch dict")
        new.zero_count = zero
        new.count = zero + sum(new._pos.values()) + sum(new._neg.values())
        return new

    def extend(self, values: Iterable[float]) -> None:
        """Count every value of ``values``."""
        for v in values:
            self.add(v)
