"""From cells to families: one read path for one process or many.

A scrape takes the store's snapshots (one, in a single process; one per process file in
multi-process mode), :func:`merge` s them by each key's :class:`~jobmetrics.cells.Rule`,
and :func:`render` s the merged cells by the family table. :func:`fold` is the merge that
keeps age buckets apart, for the archive of dead processes.
"""

from __future__ import annotations

import math
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from prometheus_client.metrics_core import Metric

from .cells import Key, Rule, Snapshot
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
    """
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
