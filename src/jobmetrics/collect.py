"""From cells to families: one read path for one process or many.

A scrape takes the store's snapshots (one, in a single process; one per process file in
multi-process mode), :func:`merge` s them by each key's :class:`~jobmetrics.cells.Rule`,
and :func:`render` s the merged cells by the family table. :func:`fold` is the merge that
keeps age buckets apart, for the archive of dead processes.
"""

from __future__ import annotations

import math
import operator
import os
import threading
from typing import (
    Callable,
    Collection,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from prometheus_client.metrics_core import Metric

from .cells import Columns, Key, Rule, Snapshot
from .durations import COUNT, ExemplarData, emit_duration
from .families import FamilyTable
from .state import STATUSES
from .window import in_window

__all__ = ["fold", "merge", "render"]

_ALL, _LIVE, _WSUM, _WMIN, _WMAX, _EPOCH = (int(r) for r in Rule)
_Bucket = Tuple[str, Tuple[str, ...], int]


def _combine(rule: int, old: Optional[float], v: float) -> float:
    if old is None:
        return v
    if rule == _WMIN:
        return old if old <= v else v
    if rule == _WMAX:
        return old if old >= v else v
    return old + v


def merge(snapshots: Iterable[Snapshot], families: Collection[str],
          windows: Mapping[str, float], n: int, now: float) -> Dict[Key, float]:
    """One value per key over every snapshot, by each key's rule.

    Only keys of ``families`` are read. Window cells lose their slot: the buckets inside
    the window at ``now`` (by each family's bucket width in ``windows``) are combined. NaN
    values are left out (a cell withdrawn by its writer).

    Snapshots whose items are :class:`~jobmetrics.cells.Columns` (multi-process files)
    are merged by a plan made once per key table: each key resolved to a slot of the
    merged key space, so a scrape adds values into a list, file by file, without
    looking a key up.
    """
    snaps = snapshots if isinstance(snapshots, list) else list(snapshots)
    if not any(type(s.items) is Columns for s in snaps):
        return _merge_items(snaps, families, windows, n, now)
    merger = _merger(families, windows)
    bounds = {w: (now // w - n, now // w) for w in merger.widths}  # lo < epoch <= hi
    # Files whose cells go to the same slots (same key order, same buckets inside the
    # window) are summed column by column: a C loop per file instead of a Python one.
    groups: Dict[int, Tuple[Tuple[int, ...], FrozenSet[int], List[Tuple[float, ...]]]] = {}
    extremes: Dict[int, float] = {}
    for snap in snaps:
        items = snap.items
        if type(items) is Columns:
            table, vals = items.table, items.values
        else:
            cells = list(items)
            table, vals = _Table(tuple(k for k, _ in cells)), tuple(v for _, v in cells)
        sub = merger.plan(table).now(vals, snap.live, bounds)
        if sub.slots:
            group = groups.get(id(sub.slots))
            if group is None:
                group = groups[id(sub.slots)] = (sub.slots, sub.slot_set, [])
            group[2].append(sub.get(vals))
        for v, s, lowest in zip(sub.ext_get(vals), sub.ext_slots, sub.ext_lowest):
            if v == v:
                old = extremes.get(s)
                if old is None or (v < old if lowest else v > old):
                    extremes[s] = v
    keys = merger.keys
    acc = [0.0] * len(keys)  # every slot of the plans above is below this length
    present: Set[int] = set()
    for slots, slot_set, rows in groups.values():
        if len(rows) > 1:
            column = tuple(map(sum, zip(*rows)))
            if sum(column) == sum(column):  # no NaN anywhere: one add per slot
                rows = [column]
        for row in rows:
            _add(acc, present, row, slots, slot_set)
    out = {keys[s]: acc[s] for s in sorted(present)}
    for s, v in extremes.items():
        out[keys[s]] = v
    return out


def _add(acc: List[float], present: Set[int], values: Sequence[float],
         slots: Sequence[int], slot_set: Collection[int]) -> None:
    if sum(values) == sum(values):  # no NaN: the common case, no test per value
        for s, v in zip(slots, values):
            acc[s] += v
        present.update(slot_set)
    else:
        for s, v in zip(slots, values):
            if v == v:
                acc[s] += v
                present.add(s)


class _Table:
    """The key column of a snapshot that came as a list (a plan made for one merge)."""

    __slots__ = ("keys", "plans")

    def __init__(self, keys: Tuple[Key, ...]) -> None:
        self.keys = keys
        self.plans: Dict[object, object] = {}


_Getter = Callable[[Sequence[float]], Tuple[float, ...]]
# What a key is to a merger (see _Merger.resolve).
_R_SKIP, _R_ALL, _R_LIVE, _R_EPOCH, _R_WSUM, _R_WMIN, _R_WMAX = range(7)


def _getter(indices: Sequence[int]) -> _Getter:
    """Picks ``indices`` out of a sequence as a tuple, in one C call."""
    if len(indices) == 1:
        i = indices[0]
        return lambda v: (v[i],)
    if not indices:
        return lambda v: ()
    return operator.itemgetter(*indices)


class _Now:
    """What a plan reads of a file while the same age buckets are inside the window
    (and the process is as live as it was): one getter of every summed cell with the
    merged slots they add into, and the smallest/largest-value cells."""

    __slots__ = ("ext_get", "ext_lowest", "ext_slots", "get", "slot_set", "slots")

    def __init__(self, merger: _Merger, pairs: List[Tuple[int, int]],
                 ext: List[Tuple[int, int, bool]]) -> None:
        self.get = _getter([i for i, _ in pairs])
        self.slots = merger.intern(tuple(s for _, s in pairs))
        self.slot_set = frozenset(self.slots)
        self.ext_get = _getter([i for i, _, _ in ext])
        self.ext_slots = [s for _, s, _ in ext]
        self.ext_lowest = [lowest for _, _, lowest in ext]


#: a bucket's ``(summed (index, slot) pairs, [(index, slot, is WMIN)])``
_BucketCells = Tuple[List[Tuple[int, int]], List[Tuple[int, int, bool]]]


class _Plan:
    """What one key table's cells are to one merger: each cell's value index and the
    merged slot it goes to, by rule; windowed cells by age bucket, each bucket with its
    epoch cell."""

    __slots__ = ("_all", "_cached", "_groups", "_live", "_merger")

    def __init__(self, merger: _Merger, keys: Sequence[Key]) -> None:
        self._merger = merger
        self._all: List[Tuple[int, int]] = []
        self._live: List[Tuple[int, int]] = []
        epochs: Dict[int, int] = {}
        cells: Dict[int, _BucketCells] = {}
        resolved, resolve = merger.resolved, merger.resolve
        for i, key in enumerate(keys):
            r = resolved.get(key)
            if r is None:
                r = resolve(key)
            what, s, bucket = r
            if what == _R_ALL:
                self._all.append((i, s))
            elif what == _R_LIVE:
                self._live.append((i, s))
            elif what == _R_EPOCH:
                epochs.setdefault(bucket, i)
            elif what != _R_SKIP:
                members = cells.get(bucket)
                if members is None:
                    members = cells[bucket] = ([], [])
                if what == _R_WSUM:
                    members[0].append((i, s))
                else:
                    members[1].append((i, s, what == _R_WMIN))
        widths = merger.bucket_widths
        # Buckets by width: (width, getter of their epochs, their cells).
        by_width: Dict[float, Tuple[List[int], List[_BucketCells]]] = {}
        for bucket, members in cells.items():
            ei = epochs.get(bucket)
            if ei is not None:  # no epoch: never inside the window
                w = by_width.setdefault(widths[bucket], ([], []))
                w[0].append(ei)
                w[1].append(members)
        self._groups = [(width, _getter(eis), members)
                        for width, (eis, members) in by_width.items()]
        self._cached: Optional[Tuple[Tuple[object, ...], _Now]] = None

    def now(self, vals: Sequence[float], live: bool,
            bounds: Mapping[float, Tuple[float, float]]) -> _Now:
        """The reading of ``vals`` at this scrape, made again only when another set of
        buckets is inside the window (every bucket width, at most) or ``live`` changed."""
        state: List[object] = [live]
        for width, get, _ in self._groups:
            lo, hi = bounds[width]
            es = get(vals)  # NaN (never written) is inside no window
            state.append(tuple(map(operator.and_, map(lo.__lt__, es), map(hi.__ge__, es))))
        key = tuple(state)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        pairs = list(self._all)
        if live:
            pairs += self._live
        ext: List[Tuple[int, int, bool]] = []
        for (_, _, members), inside in zip(self._groups, key[1:]):
            for (sums, extremes), yes in zip(members, inside):  # type: ignore[call-overload]
                if yes:
                    pairs += sums
                    ext += extremes
        found = _Now(self._merger, pairs, ext)
        self._cached = (key, found)
        return found


class _Merger:
    """The merged key space of one ``(families, windows)``: a slot per key ever read,
    and the plan of every key table read (kept in the table's ``plans``)."""

    def __init__(self, families: FrozenSet[str], windows: Mapping[str, float]) -> None:
        self.families = families
        self.windows = dict(windows)
        self.widths = frozenset(self.windows.values())
        self.keys: List[Key] = []
        self._slots: Dict[Key, int] = {}
        self._interned: Dict[Tuple[int, ...], Tuple[int, ...]] = {}
        self._lock = threading.Lock()
        #: Replaced by a new merger: its plans are dropped from the tables that hold them.
        self.retired = False
        #: Each key read: (what it is, its slot, its age bucket's number); see resolve.
        self.resolved: Dict[Key, Tuple[int, int, int]] = {}
        self._buckets: Dict[_Bucket, int] = {}
        #: The bucket width of each age bucket number.
        self.bucket_widths: List[float] = []

    def resolve(self, key: Key) -> Tuple[int, int, int]:
        """What ``key`` is to this merger (the caller holds the lock): ``(_R_*, slot,
        age bucket number)``, remembered for the next table holding it."""
        fam, labels, part = key
        rule = part[0]
        what, s, bucket = _R_SKIP, -1, -1
        if rule == _EPOCH:
            if fam in self.windows and len(part) >= 2:
                what, bucket = _R_EPOCH, self._bucket((fam, labels, part[1]))
        elif fam not in self.families:
            pass
        elif rule == _ALL:
            what, s = _R_ALL, self.slot(key)
        elif rule == _LIVE:
            what, s = _R_LIVE, self.slot(key)
        elif _WSUM <= rule <= _WMAX and len(part) >= 2 and fam in self.windows:
            what = _R_WSUM if rule == _WSUM else _R_WMIN if rule == _WMIN else _R_WMAX
            s = self.slot((fam, labels, (rule, *part[2:])))
            bucket = self._bucket((fam, labels, part[1]))
        found = self.resolved[key] = (what, s, bucket)
        return found

    def _bucket(self, bucket: _Bucket) -> int:
        b = self._buckets.get(bucket)
        if b is None:
            self.bucket_widths.append(self.windows[bucket[0]])
            b = self._buckets[bucket] = len(self.bucket_widths) - 1
        return b

    def slot(self, key: Key) -> int:
        """``key``'s slot (the caller holds the lock)."""
        s = self._slots.get(key)
        if s is None:
            self.keys.append(key)  # first: a fork mid-way leaves an unused key, no hole
            s = self._slots[key] = len(self.keys) - 1
        return s

    def intern(self, slots: Tuple[int, ...]) -> Tuple[int, ...]:
        """One object per slot sequence, so files that read alike are found alike."""
        interned = self._interned
        if len(interned) > 4096:  # readings of buckets long gone
            interned.clear()
        return interned.setdefault(slots, slots)

    def plan(self, table: object) -> _Plan:
        """The plan of ``table`` (a key table: ``keys`` and ``plans``)."""
        plans: Dict[object, object] = table.plans  # type: ignore[attr-defined]
        plan = plans.get(self)
        if plan is None:
            with self._lock:
                plan = _Plan(self, table.keys)  # type: ignore[attr-defined]
            for old in [m for m in list(plans) if getattr(m, "retired", False)]:
                plans.pop(old, None)  # its key space must not stay alive through us
            plans[self] = plan
        return plan  # type: ignore[return-value]


_mergers: Dict[Tuple[FrozenSet[str], Tuple[Tuple[str, float], ...]], _Merger] = {}
#: Past this many merged keys a merger starts again (label values come and go).
_MAX_SLOTS = 1_000_000


def _merger(families: Collection[str], windows: Mapping[str, float]) -> _Merger:
    fams = families if isinstance(families, frozenset) else frozenset(families)
    key = (fams, tuple(sorted(windows.items())))
    merger = _mergers.get(key)
    if merger is None or len(merger.resolved) > _MAX_SLOTS:
        if merger is not None:
            merger.retired = True
        merger = _mergers[key] = _Merger(fams, windows)
    return merger


def _after_fork_in_child() -> None:
    # A merger's lock may be held by a thread of the parent: the child starts afresh.
    for merger in list(_mergers.values()):
        merger.retired = True
    _mergers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _merge_items(snapshots: Sequence[Snapshot], families: Collection[str],
                 windows: Mapping[str, float], n: int, now: float) -> Dict[Key, float]:
    # Snapshots as lists of pairs (one process's memory): read once, no plan to keep.
    out: Dict[Key, float] = {}
    for snap in snapshots:
        items = snap.items if isinstance(snap.items, list) else list(snap.items)
        valid: Set[_Bucket] = set()
        for (fam, labels, part), v in items:
            if part[0] == _EPOCH and v == v:
                width = windows.get(fam)
                if width is not None and in_window(v, now, width, n):
                    valid.add((fam, labels, part[1]))
        live = snap.live
        for key, v in items:
            fam, labels, part = key
            if v != v or fam not in families:
                continue
            rule = part[0]
            if rule == _ALL or (rule == _LIVE and live):
                out[key] = out.get(key, 0.0) + v
            elif _WSUM <= rule <= _WMAX and (fam, labels, part[1]) in valid:
                k2 = (fam, labels, (rule, *part[2:]))
                out[k2] = _combine(rule, out.get(k2), v)
    return out


def _epochs(items: Iterable[Tuple[Key, float]]) -> Dict[_Bucket, float]:
    return {(fam, labels, part[1]): (v if v == v else -math.inf)
            for (fam, labels, part), v in items if part[0] == _EPOCH}


def fold(into: Dict[Key, float], items: Sequence[Tuple[Key, float]]) -> None:
    """Fold a dead process's cells into the archive's, keeping age buckets apart:
    counts add, live gauges go, each bucket keeps the newer epoch (or combines, for the
    same epoch). Every family is kept, whichever service wrote it."""
    mine = _epochs(into.items())
    theirs = _epochs(items)
    newer = {b for b, e in theirs.items() if e > mine.get(b, -math.inf)}
    same = {b for b, e in theirs.items() if e == mine.get(b, -math.inf) and e > -math.inf}
    if newer:
        for key in [k for k in into if k[2][0] >= _WSUM and (k[0], k[1], k[2][1]) in newer]:
            del into[key]
    for key, v in items:
        if v != v:
            continue
        fam, labels, part = key
        rule = part[0]
        if rule == _ALL:
            into[key] = into.get(key, 0.0) + v
        elif rule >= _WSUM:
            bucket = (fam, labels, part[1])
            if bucket in newer:
                into[key] = v
            elif bucket in same and rule != _EPOCH:
                into[key] = _combine(rule, into.get(key), v)


def render(merged: Mapping[Key, float], table: FamilyTable, info: Mapping[str, str],
           live: int, exemplars: Optional[Mapping[Tuple[str, ...], Sequence[Optional[
               ExemplarData]]]] = None) -> List[Metric]:
    """Every family of ``table`` from merged cells; ``live`` processes serve (the
    ``workers`` label when it was not given)."""
    by: Dict[str, Dict[Tuple[str, ...], Dict[Tuple[int, ...], float]]] = {}
    keys = table.keys
    for (fam, labels, part), v in merged.items():
        k = keys.get(fam)
        if k is not None:
            by.setdefault(k, {}).setdefault(labels, {})[part] = v
    s = table.settings
    empty: Dict[Tuple[int, ...], float] = {}
    live_part = (_LIVE,)

    def series(key: str) -> Dict[Tuple[str, ...], Dict[Tuple[int, ...], float]]:
        return by.get(key, {})

    inflight, requests = table.gauge("inflight"), table.counter("requests")
    rdur = table.duration("request_duration")
    inflight.add_metric((), series("inflight").get((), empty).get(live_part, 0.0))
    for labels, parts in sorted(series("requests").items()):
        requests.add_metric(labels, parts.get((_ALL,), 0.0))
    for labels, parts in sorted(series("request_duration").items()):
        emit_duration(rdur, {"method": labels[0], "operation": labels[1]}, parts, s,
                      exemplars.get(labels) if exemplars is not None else None)

    total, ptime = table.counter("tasks"), table.duration("process_time")
    retries = table.counter("retries")
    rate, running, pending = (table.gauge(k) for k in ("success_rate", "running", "pending"))
    types = {labels[0] for k in ("process_time", "success_rate", "running", "pending")
             for labels in series(k)}
    ptimes, rates, retried = series("process_time"), series("success_rate"), series("retries")
    runs, pends = series("running"), series("pending")
    for t in sorted(types):
        for status in STATUSES:
            parts = ptimes.get((t, status), empty)
            total.add_metric((t, status), parts.get((_ALL, COUNT), 0.0))
            emit_duration(ptime, {"type": t, "status": status}, parts, s)
        parts = rates.get((t,), empty)
        good, bad = parts.get((_WSUM, 1), 0.0), parts.get((_WSUM, 0), 0.0)
        rate.add_metric((t,), good / (good + bad) if good + bad else math.nan)
        retries.add_metric((t,), retried.get((t,), empty).get((_ALL,), 0.0))
        running.add_metric((t,), runs.get((t,), empty).get(live_part, 0.0))
        pending.add_metric((t,), pends.get((t,), empty).get(live_part, 0.0))

    size = table.gauge("queue_size")
    for labels, parts in sorted(series("queue_size").items()):
        if live_part in parts:
            size.add_metric(labels, parts[live_part])
    fam_info = table.info("info")
    shown = dict(info)
    if shown.get("workers") in ("", "0"):
        shown["workers"] = str(live)
    fam_info.add_metric((), shown)
    out = [inflight, requests, rdur, total, ptime, rate, retries, running, pending, size,
           fam_info]
    waits = series("queue_wait")
    if waits:
        wait = table.duration("queue_wait")
        for labels, parts in sorted(waits.items()):
            emit_duration(wait, {"queue": labels[0]}, parts, s)
        out.append(wait)
    return out
