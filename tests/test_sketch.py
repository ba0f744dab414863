"""QuantileSketch: the relative-error guarantee against exact quantiles, merging, memory."""

from __future__ import annotations

import math
import random

import pytest

from jobmetrics import QuantileSketch

QS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_within(sketch: QuantileSketch, values: list[float], accuracy: float) -> None:
    for q, got in zip(QS, sketch.quantiles(QS)):
        want = exact(values, q)
        # The guarantee, plus a hair for float rounding at a bucket boundary.
        assert abs(got - want) <= accuracy * abs(want) * (1 + 1e-9) + 1e-300, (q, got, want)


def sketch_of(values: list[float], accuracy: float = 0.01) -> QuantileSketch:
    s = QuantileSketch(accuracy)
    s.extend(values)
    return s


rng = random.Random(20261128)
DATASETS = {
    "uniform": [rng.uniform(0, 10) for _ in range(20_000)],
    "exponential": [rng.expovariate(3.0) for _ in range(20_000)],
    "pareto": [rng.paretovariate(1.1) for _ in range(20_000)],
    "lognormal": [rng.lognormvariate(0, 3) for _ in range(20_000)],
    "constant": [0.25] * 1000,
    "tiny": [rng.uniform(1e-12, 5e-12) for _ in range(5000)],
    "huge": [rng.uniform(1e12, 1e15) for _ in range(5000)],
    "with_zeros": [0.0] * 300 + [rng.uniform(0, 1) for _ in range(700)],
    "negatives": [rng.gauss(0, 100) for _ in range(10_000)],
    "one": [42.0],
    "two": [1.0, 1000.0],
}


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("accuracy", [0.01, 0.05])
def test_estimates_are_within_relative_accuracy(name: str, accuracy: float) -> None:
    values = DATASETS[name]
    assert_within(sketch_of(values, accuracy), values, accuracy)


def test_default_accuracy_is_one_percent() -> None:
    assert QuantileSketch().relative_accuracy == 0.01


def test_count_and_empty() -> None:
    s = QuantileSketch()
    assert s.count == 0
    assert all(math.isnan(v) for v in s.quantiles((0.5, 0.99)))
    s.add(3.0)
    s.add(float("nan"))  # ignored
    assert s.count == 1
    assert s.quantile(0.5) == pytest.approx(3.0, rel=0.01)


def test_infinities_are_counted_at_the_ends() -> None:
    s = sketch_of([1.0, 2.0, math.inf, -math.inf])
    assert s.count == 4
    assert s.quantile(0.0) < -1e307
    assert s.quantile(1.0) > 1e307


def test_merge_equals_sketch_of_union() -> None:
    a_vals = DATASETS["lognormal"][:7000]
    b_vals = DATASETS["negatives"][:3000] + DATASETS["with_zeros"]
    a, b = sketch_of(a_vals), sketch_of(b_vals)
    a.merge(b)
    union = sketch_of(a_vals + b_vals)
    assert a.to_dict() == union.to_dict()
    assert a.count == union.count == len(a_vals) + len(b_vals)
    assert a.quantiles(QS) == union.quantiles(QS)
    assert_within(a, a_vals + b_vals, 0.01)


def test_merge_rejects_other_accuracy() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


def test_round_trip_through_plain_data() -> None:
    s = sketch_of(DATASETS["negatives"] + [0.0])
    again = QuantileSketch.from_dict(s.to_dict())
    assert again.to_dict() == s.to_dict()
    assert again.count == s.count
    assert again.quantiles(QS) == s.quantiles(QS)


def test_copy_is_independent() -> None:
    s = sketch_of([1.0, 2.0])
    c = s.copy()
    c.add(100.0)
    assert s.count == 2 and c.count == 3


def test_memory_is_bounded_and_upper_quantiles_keep_the_guarantee() -> None:
    s = QuantileSketch(0.01, max_buckets=64)
    values = [10.0 ** rng.uniform(-9, 9) for _ in range(50_000)]
    s.extend(values)
    assert s.bucket_count <= 64
    assert s.count == 50_000
    # 64 buckets at 1% cover a ratio of gamma**64 ~ 3.6: the top quantiles are exact-ish.
    for q in (0.999, 1.0):
        want = exact(values, q)
        assert abs(s.quantile(q) - want) <= 0.01 * want * (1 + 1e-9)


def test_bucket_count_is_flat_for_a_long_stream() -> None:
    s = QuantileSketch()
    for i in range(200_000):
        s.add(0.001 + (i % 1000) * 0.001)
    first = s.bucket_count
    for i in range(200_000):
        s.add(0.001 + (i % 1000) * 0.001)
    assert s.bucket_count == first <= 2 * 350


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"relative_accuracy": 0}, ValueError, "relative_accuracy"),
        ({"relative_accuracy": 1.5}, ValueError, "relative_accuracy"),
        ({"relative_accuracy": "0.01"}, TypeError, "relative_accuracy"),
        ({"max_buckets": 1}, ValueError, "max_buckets"),
        ({"max_buckets": 2.5}, TypeError, "max_buckets"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        QuantileSketch(**kwargs)  # type: ignore[arg-type]


def test_values_near_the_largest_float_are_not_infinite() -> None:
    s = QuantileSketch()
    for v in (8.95e307, 1.0e308, 1.7e308):
        s.add(v)
    for q, exact in zip(s.quantiles([0.0, 0.5, 0.99]), (8.95e307, 1.0e308, 1.0e308)):
        assert math.isfinite(q)
        assert abs(q - exact) <= s.relative_accuracy * exact


def test_past_the_bucket_cap_negative_values_keep_the_upper_quantiles() -> None:
    import random

    rng = random.Random(1)
    values = [-(10 ** rng.uniform(-10, 10)) for _ in range(20_000)]
    s = QuantileSketch(max_buckets=64)
    s.extend(values)
    ordered = sorted(values)
    exact = ordered[math.floor(0.99 * (len(ordered) - 1))]
    # The lowest values are folded; the top ones keep the guarantee (it was 3e19x off).
    assert abs(s.quantile(0.99) - exact) <= s.relative_accuracy * abs(exact)


def test_the_guarantee_holds_at_both_ends_of_the_float_range() -> None:
    """The largest floats report within a' (not +inf or the largest float), and denormals
    within a' plus half the spacing of floats there (a reported value is a float)."""
    import math
    import sys

    rng = random.Random(7)
    top = [rng.uniform(8.9e307, sys.float_info.max) for _ in range(2000)] + [
        sys.float_info.max]
    tiny = [math.exp(rng.uniform(math.log(5e-324), math.log(2.2e-308)))
            for _ in range(2000)] + [5e-324, 1e-320]
    for v in top + tiny + [-v for v in top + tiny]:
        s = QuantileSketch()
        s.add(v)
        got = s.quantile(0.5)
        assert math.isfinite(got)
        assert abs(got - v) <= s.accuracy * abs(v) + 2.5e-324, v
