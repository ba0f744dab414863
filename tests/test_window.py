"""The sliding windows' age buckets, driven with explicit times (no sleeping)."""

from __future__ import annotations

import math

from jobmetrics.window import SlidingRatio, SlidingSketch


def test_values_leave_the_window_bucket_by_bucket() -> None:
    w = SlidingSketch(max_age=30.0, age_buckets=3, relative_accuracy=0.01, now=0.0)
    w.add(1.0, now=1.0)     # bucket [0, 10)
    w.add(100.0, now=12.0)  # bucket [10, 20)
    assert w.merged(now=15.0).count == 2
    # At 30 the bucket [0, 10) is reused: 1.0 is gone, 100.0 stays until 40.
    merged = w.merged(now=30.0)
    assert merged.count == 1
    assert abs(merged.quantile(0.0) - 100.0) <= 1.0
    assert w.merged(now=39.9).count == 1
    assert w.merged(now=40.0).count == 0
    assert all(math.isnan(q) for q in w.quantiles([0.5, 0.99], now=40.0))


def test_a_long_pause_empties_every_bucket_once() -> None:
    w = SlidingSketch(max_age=3.0, age_buckets=3, relative_accuracy=0.01, now=0.0)
    for t in (0.5, 1.5, 2.5):
        w.add(t, now=t)
    assert w.merged(now=2.9).count == 3
    w.add(7.0, now=1000.0)
    assert w.merged(now=1000.0).count == 1


def test_ratio_window() -> None:
    r = SlidingRatio(max_age=10.0, age_buckets=2, now=0.0)
    assert math.isnan(r.ratio(now=0.0))
    r.add(True, now=1.0)
    r.add(False, now=6.0)
    r.add(True, now=7.0)
    assert r.ratio(now=9.0) == 2 / 3
    assert r.ratio(now=10.0) == 1 / 2  # the bucket [0, 5) has gone
    assert math.isnan(r.ratio(now=15.0))
