"""The sliding windows' age buckets, driven with explicit times (no sleeping), through
the one read path: cells in a store, merged at a scrape time."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from jobmetrics.cells import MemoryStore, Rule
from jobmetrics.collect import merge
from jobmetrics.durations import Duration, summary_quantiles
from jobmetrics.settings import Settings
from jobmetrics.window import Window


class SketchWindow:
    """A summary's window: values in, merged window cells out."""

    def __init__(self, max_age: float, age_buckets: int) -> None:
        self.settings = Settings(max_age=max_age, age_buckets=age_buckets,
                                 quantiles=(0.01, 0.5, 0.99))
        self.store = MemoryStore()
        self.duration = Duration(self.store, "d", (), self.settings, "summary")

    def add(self, value: float, now: float) -> None:
        with self.store.lock:
            self.duration.observe(value, now)

    def parts(self, now: float) -> Dict[Tuple[int, ...], float]:
        s = self.settings
        merged = merge(self.store.snapshots(), {"d"}, {"d": s.max_age / s.age_buckets},
                       s.age_buckets, now)
        return {part: v for (_, _, part), v in merged.items()}

    def count(self, now: float) -> float:
        return sum(v for p, v in self.parts(now).items() if p[0] == Rule.WSUM)

    def quantiles(self, now: float) -> List[float]:
        return summary_quantiles(self.parts(now), self.settings)


def test_values_leave_the_window_bucket_by_bucket() -> None:
    w = SketchWindow(max_age=30.0, age_buckets=3)
    w.add(1.0, now=1.0)     # bucket [0, 10)
    w.add(100.0, now=12.0)  # bucket [10, 20)
    assert w.count(now=15.0) == 2
    # At 30 the bucket [0, 10) is reused: 1.0 is gone, 100.0 stays until 40.
    assert w.count(now=30.0) == 1
    assert abs(w.quantiles(now=30.0)[0] - 100.0) <= 1.0
    assert w.count(now=39.9) == 1
    assert w.count(now=40.0) == 0
    assert all(math.isnan(q) for q in w.quantiles(now=40.0))


def test_a_long_pause_empties_every_bucket_once() -> None:
    w = SketchWindow(max_age=3.0, age_buckets=3)
    for t in (0.5, 1.5, 2.5):
        w.add(t, now=t)
    assert w.count(now=2.9) == 3
    w.add(7.0, now=1000.0)
    assert w.count(now=1000.0) == 1


def test_quantiles_stay_within_the_values_observed() -> None:
    w = SketchWindow(max_age=30.0, age_buckets=3)
    for _ in range(100):
        w.add(1.0, now=1.0)
    assert w.quantiles(now=2.0) == [1.0, 1.0, 1.0]  # the sketch alone says 1.01
    w = SketchWindow(max_age=30.0, age_buckets=3)
    for i in range(501):
        w.add(0.1 + i * 0.001, now=1.0)
    p1, _, p99 = w.quantiles(now=2.0)
    assert p1 >= 0.1 and p99 <= 0.6


def test_ratio_window() -> None:
    store = MemoryStore()
    r = Window(store, "r", (), width=5.0, n=2)

    def ratio(now: float) -> float:
        merged = merge(store.snapshots(), {"r"}, {"r": 5.0}, 2, now)
        good = merged.get(("r", (), (Rule.WSUM, 1)), 0.0)
        bad = merged.get(("r", (), (Rule.WSUM, 0)), 0.0)
        return good / (good + bad) if good + bad else math.nan

    assert math.isnan(ratio(now=0.0))
    r.add(1, now=1.0)
    r.add(0, now=6.0)
    r.add(1, now=7.0)
    assert ratio(now=9.0) == 2 / 3
    assert ratio(now=10.0) == 1 / 2  # the bucket [0, 5) has gone
    assert math.isnan(ratio(now=15.0))
