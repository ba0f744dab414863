"""Sliding time windows made of age buckets, as the Go client's summaries use.

A window of ``max_age`` seconds is a ring of ``age_buckets`` slots, each covering
``max_age / age_buckets`` seconds. New values go to the newest slot; when its time is
up the ring advances and the oldest slot is emptied. A read combines every slot, so it
sees between ``max_age * (age_buckets - 1) / age_buckets`` and ``max_age`` seconds of
history. Writing touches one slot (O(1)); rotation costs one comparison per write.

Times are ``time.perf_counter()`` readings passed in by the caller, who also serialises
access: these objects hold no lock of their own.
"""

from __future__ import annotations

import math
from typing import List, Sequence

from .sketch import QuantileSketch

__all__ = ["SlidingRatio", "SlidingSketch"]


class _Ring:
    __slots__ = ("_head", "_next", "_size", "_width")

    def __init__(self, max_age: float, age_buckets: int, now: float) -> None:
        self._size = age_buckets
        self._width = max_age / age_buckets
        self._head = 0
        self._next = now + self._width

    def _advance(self, now: float) -> None:
        # Empty every slot whose time has passed, oldest first, at most the whole ring.
        steps = min(self._size, int((now - self._next) // self._width) + 1)
        for _ in range(steps):
            self._head = (self._head + 1) % self._size
            self._reset(self._head)
        self._next += self._width * (int((now - self._next) // self._width) + 1)

    def _reset(self, slot: int) -> None:
        raise NotImplementedError


class SlidingSketch(_Ring):
    """A :class:`QuantileSketch` over a sliding window."""

    __slots__ = ("_slots",)

    def __init__(
        self, max_age: float, age_buckets: int, relative_accuracy: float, now: float
    ) -> None:
        super().__init__(max_age, age_buckets, now)
        self._slots = [QuantileSketch(relative_accuracy) for _ in range(age_buckets)]

    def _reset(self, slot: int) -> None:
        self._slots[slot].clear()

    def add(self, value: float, now: float) -> None:
        """Count ``value`` observed at time ``now``."""
        if now >= self._next:
            self._advance(now)
        self._slots[self._head].add(value)

    def merged(self, now: float) -> QuantileSketch:
        """One sketch of every value still inside the window at ``now``."""
        if now >= self._next:
            self._advance(now)
        out = self._slots[0].copy()
        for s in self._slots[1:]:
            out.merge(s)
        return out

    def quantiles(self, qs: Sequence[float], now: float) -> List[float]:
        """Quantile estimates over the window (NaN when it is empty)."""
        return self.merged(now).quantiles(qs)


class SlidingRatio(_Ring):
    """Counts of good and bad outcomes over a sliding window, and their ratio."""

    __slots__ = ("_bad", "_good")

    def __init__(self, max_age: float, age_buckets: int, now: float) -> None:
        super().__init__(max_age, age_buckets, now)
        self._good = [0] * age_buckets
        self._bad = [0] * age_buckets

    def _reset(self, slot: int) -> None:
        self._good[slot] = 0
        self._bad[slot] = 0

    def add(self, good: bool, now: float) -> None:
        """Count one outcome at time ``now``."""
        if now >= self._next:
            self._advance(now)
        if good:
            self._good[self._head] += 1
        else:
            self._bad[self._head] += 1

    def ratio(self, now: float) -> float:
        """``good / (good + bad)`` over the window; NaN when the window holds nothing."""
        if now >= self._next:
            self._advance(now)
        good = sum(self._good)
        total = good + sum(self._bad)
        return good / total if total else math.nan
