"""Sliding windows kept in cells: counts per age bucket, buckets aligned to the clock.

A window of ``n`` age buckets of ``width`` seconds holds, in the bucket of epoch
``e = floor(now / width)`` (slot ``e % n``), what was recorded during that epoch. At a
scrape at time ``now``, the buckets with ``floor(now / width) - n < e <= floor(now / width)``
are inside the window. The clock is ``time.perf_counter()``, the system's monotonic clock
on Linux and macOS: every process of a host reads the same value, so the buckets of
several processes line up and merge bucket by bucket, and a wall-clock step (NTP, a VM
resumed) moves nothing.

Each bucket has an :attr:`~jobmetrics.cells.Rule.EPOCH` cell. The writer reusing a slot for
a new epoch first empties the slot's cells, then writes the new epoch, so a reader never
takes an old bucket's counts for the new epoch's.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from .cells import Rule, Store

__all__ = ["Window", "in_window"]


def in_window(epoch: float, now: float, width: float, n: int) -> bool:
    """Whether the bucket of ``epoch`` is inside the window at time ``now``."""
    current = now // width
    return current - n < epoch <= current


class Window:
    """One window's cells: ``(WSUM, slot, cell)`` counts and, with ``extremes``, the
    smallest and largest value recorded per bucket. The caller holds ``store.lock``."""

    __slots__ = ("_cells", "_cur", "_epoch", "_epochs", "_extremes", "_family", "_labels",
                 "_max", "_min", "_minmax", "_slot", "_store", "n", "width")

    def __init__(self, store: Store, family: str, labels: Tuple[str, ...], width: float,
                 n: int, extremes: bool = False) -> None:
        self._store = store
        self._family = family
        self._labels = labels
        self.width = width
        self.n = n
        self._extremes = extremes
        self.bind()

    def bind(self) -> None:
        """Take this window's cells in the store (again, after a fork gave it a new file)."""
        fam, labels, store = self._family, self._labels, self._store
        self._epochs = [store.cell((fam, labels, (Rule.EPOCH, s)), math.nan)
                        for s in range(self.n)]
        self._minmax: List[Tuple[int, int]] = [
            (store.cell((fam, labels, (Rule.WMIN, s)), math.inf),
             store.cell((fam, labels, (Rule.WMAX, s)), -math.inf))
            for s in range(self.n)] if self._extremes else []
        self._cells: List[Dict[int, int]] = [{} for _ in range(self.n)]
        self._epoch = math.nan
        self._slot = 0
        self._cur = self._cells[0]  # the current slot's cells
        self._min = self._max = 0

    def _rotate(self, epoch: float) -> None:
        slot = int(epoch % self.n)
        v = self._store.values
        mm = self._minmax[slot] if self._extremes else None
        if v[self._epochs[slot]] != epoch:
            for h in self._cells[slot].values():
                v[h] = 0.0
            if mm is not None:
                v[mm[0]] = math.inf
                v[mm[1]] = -math.inf
            v[self._epochs[slot]] = epoch
        self._epoch = epoch
        self._slot = slot
        self._cur = self._cells[slot]
        if mm is not None:
            self._min, self._max = mm

    def _new(self, cell: int) -> int:
        h = self._cur[cell] = self._store.cell(
            (self._family, self._labels, (Rule.WSUM, self._slot, cell)))
        return h

    def add(self, cell: int, now: float) -> None:
        """Count one in ``cell`` in the bucket of time ``now``."""
        if now // self.width != self._epoch:
            self._rotate(now // self.width)
        h = self._cur.get(cell)
        if h is None:
            h = self._new(cell)
        self._store.values[h] += 1.0

    def add_value(self, cell: int, value: float, now: float) -> None:
        """:meth:`add`, keeping ``value`` as the bucket's min/max (``extremes`` only)."""
        if now // self.width != self._epoch:
            self._rotate(now // self.width)
        h = self._cur.get(cell)
        if h is None:
            h = self._new(cell)
        v = self._store.values
        v[h] += 1.0
        if value < v[self._min]:
            v[self._min] = value
        if value > v[self._max]:
            v[self._max] = value
