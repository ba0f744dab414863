"""Cells: the float values every family's state is made of, and where they are stored.

A cell is one float64 addressed by a typed :data:`Key`: the family's full name, its label
values, and a *part* whose first element is the :class:`Rule` that says how the cell merges
across processes. State objects (``state.py``) hold the handles of their cells and update
``store.values[handle]`` directly under ``store.lock``; what the store is decides where the
values live, as prometheus_client swaps its value class and keeps its metric classes:

- :class:`MemoryStore`: a Python list, for a single process;
- ``multiprocess.FileStore``: a memory-mapped file other processes read.

Reading is the same for both: a store gives :class:`Snapshot` s (its own, or one per
process file), and ``collect.py`` merges them by each key's rule, so the single-process
scrape is the one-snapshot case of the multi-process merge.
"""

from __future__ import annotations

import os
import threading
import weakref
from enum import IntEnum
from typing import (
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Protocol,
    Tuple,
    TypeVar,
)

__all__ = ["Cells", "Columns", "Key", "MemoryStore", "Rule", "Snapshot", "Store", "Values"]


class Rule(IntEnum):
    """How a cell merges across processes (the first element of a key's part)."""

    #: Summed over every process that ever ran, dead ones included (counters, ``_sum``,
    #: ``_count``, buckets).
    ALL = 0
    #: Summed over the processes alive now (in-flight, running, pending, queue size).
    LIVE = 1
    #: A count in one age bucket of a window: summed over processes and over the buckets
    #: inside the window. Part: ``(WSUM, slot, cell)``.
    WSUM = 2
    #: The smallest value seen in one age bucket: the minimum over the window.
    WMIN = 3
    #: The largest value seen in one age bucket: the maximum over the window.
    WMAX = 4
    #: The epoch an age bucket holds; part ``(EPOCH, slot)``. Cells of a bucket whose epoch
    #: is outside the window at scrape time are left out.
    EPOCH = 5


#: ``(family name, label values, part)``; a part is ``(Rule, ...ints)``.
Key = Tuple[str, Tuple[str, ...], Tuple[int, ...]]


class Snapshot(NamedTuple):
    """The cells of one process at one instant."""

    live: bool
    items: Iterable[Tuple[Key, float]]


class KeyColumn(Protocol):
    """The keys of a :class:`Columns`; ``plans`` is the reader's cache for this key
    order (``collect.merge`` keeps what it resolved the keys to there)."""

    @property
    def keys(self) -> Tuple[Key, ...]: ...

    @property
    def plans(self) -> Dict[object, object]: ...


class Columns:
    """A snapshot's cells as two columns, keys (shared from scrape to scrape while a
    file's keys do not change) and values: what a multi-process file read gives, so
    the merge resolves each file's keys once instead of once per scrape. Iterates as
    ``(key, value)`` pairs like any other ``Snapshot.items``."""

    __slots__ = ("table", "values")

    def __init__(self, table: KeyColumn, values: Tuple[float, ...]) -> None:
        self.table = table
        self.values = values

    def __iter__(self) -> Iterator[Tuple[Key, float]]:
        return zip(self.table.keys, self.values)

    def __len__(self) -> int:
        return len(self.values)


class Values(Protocol):
    """Indexable floats: a list, or a ``memoryview`` of float64s over a mapped file."""

    def __getitem__(self, handle: int, /) -> float: ...

    def __setitem__(self, handle: int, value: float, /) -> None: ...


class Store(Protocol):
    """Where one process's cells live."""

    @property
    def lock(self) -> threading.RLock:
        """Held while updating ``values`` (reentrant: a finalizer run by the garbage
        collector inside a critical section may record too)."""

    @property
    def values(self) -> Values:
        """``values[handle]``; re-read after every :meth:`cell` call (it may be
        replaced)."""

    def cell(self, key: Key, initial: float = 0.0) -> int:
        """The handle of ``key``'s cell, created with ``initial`` on first use."""

    def state(self, key: Tuple[object, ...], make: Callable[[], S]) -> S:
        """The state object for ``key`` in this store, made by ``make()`` on first use:
        two services recording into one store share their state objects."""

    def snapshots(self) -> List[Snapshot]:
        """Every process's cells, to be merged (the caller does not hold the lock)."""


S = TypeVar("S")


class Cells:
    """The bookkeeping every store shares: handles by key, state objects by key."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.handles: Dict[Key, int] = {}
        self._states: Dict[Tuple[object, ...], object] = {}

    def state(self, key: Tuple[object, ...], make: Callable[[], S]) -> S:
        with self.lock:
            found = self._states.get(key)
            if found is None:
                found = self._states[key] = make()
            return found  # type: ignore[return-value]

    def states(self) -> List[object]:
        """Every state object made in this store."""
        with self.lock:
            return list(self._states.values())

    def _reinit_lock(self) -> None:
        # A fork can happen while another thread holds the lock; that thread does not
        # exist in the child, which would wait for it forever.
        self.lock = threading.RLock()


class MemoryStore(Cells):
    """Cells in a Python list: one process, one snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.values: List[float] = []
        self._keys: List[Key] = []
        _memory_stores.add(self)

    def cell(self, key: Key, initial: float = 0.0) -> int:
        with self.lock:
            h = self.handles.get(key)
            if h is None:
                h = len(self.values)
                self._keys.append(key)
                self.values.append(initial)
                self.handles[key] = h
            return h

    def snapshots(self) -> List[Snapshot]:
        with self.lock:
            return [Snapshot(True, list(zip(self._keys, self.values)))]

    def detach(self) -> List[Tuple[Key, float]]:
        """Every cell, for a store about to become another kind in place (see
        ``FileStore.adopt``); this store is no longer a memory store after it. The caller
        holds the lock."""
        items = list(zip(self._keys, self.values))
        del self._keys
        _memory_stores.discard(self)
        return items


_memory_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_memory_stores):
        store._reinit_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
