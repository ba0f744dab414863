"""Per-call cost of @m.task against the bare call and hand-written prometheus_client code,
and of the quantile summary's observe against prometheus_client and prometheus-summary.

Run: .venv/bin/python bench/bench_tasks.py   (needs the [bench] extra for prometheus-summary)
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from jobmetrics import JobMetrics, QuantileSummary

sys.path.insert(0, os.path.dirname(__file__))
from timing import per_await, per_call, us


def trivial() -> int:
    return 1


async def atrivial() -> int:
    return 1


def hand_written(kind: str) -> tuple:  # type: ignore[type-arg]
    """What a user writes by hand for the same families, per call (labels looked up)."""
    r = CollectorRegistry()
    total = Counter("t_task", "d", ["type", "status"], registry=r)
    running = Gauge("t_running", "d", ["type"], registry=r)
    cls = Summary if kind == "summary" else Histogram
    ptime = cls("t_ptime", "d", ["type", "status"], registry=r)
    pc = time.perf_counter

    def call() -> int:
        running.labels("t").inc()
        start = pc()
        try:
            result = trivial()
        except Exception:
            running.labels("t").dec()
            total.labels("t", "fail").inc()
            ptime.labels("t", "fail").observe(pc() - start)
            raise
        running.labels("t").dec()
        total.labels("t", "success").inc()
        ptime.labels("t", "success").observe(pc() - start)
        return result

    async def acall() -> int:
        running.labels("t").inc()
        start = pc()
        try:
            result = await atrivial()
        except Exception:
            running.labels("t").dec()
            total.labels("t", "fail").inc()
            ptime.labels("t", "fail").observe(pc() - start)
            raise
        running.labels("t").dec()
        total.labels("t", "success").inc()
        ptime.labels("t", "success").observe(pc() - start)
        return result

    return call, acall


def main() -> None:
    rows = []
    bare = per_call(trivial)
    abare = per_await(atrivial)
    hand_s, ahand_s = hand_written("summary")
    hand_h, ahand_h = hand_written("histogram")
    results = {}
    for kind in ("summary", "histogram", "native"):
        m = JobMetrics(registry=CollectorRegistry(), task_duration=kind, process_collectors=False)
        results[kind] = (per_call(m.task("t")(trivial)), per_await(m.task("t")(atrivial)))
    hs, ahs = per_call(hand_s), per_await(ahand_s)
    hh, ahh = per_call(hand_h), per_await(ahand_h)

    print("## @m.task per call (µs; overhead = minus the bare call)\n")
    print("| call | sync | async |")
    print("|---|---|---|")
    print(f"| bare function | {us(bare)} | {us(abare)} |")
    print(f"| hand-written prometheus_client, Summary | {us(hs)} | {us(ahs)} |")
    print(f"| hand-written prometheus_client, Histogram | {us(hh)} | {us(ahh)} |")
    for kind, (s, a) in results.items():
        print(f"| `@m.task`, {kind} durations, with success rate | {us(s)} | {us(a)} |")
    s, a = results["summary"]
    rows.append(("sync", (s - bare) / (hh - bare), (s - bare) / (hs - bare)))
    rows.append(("async", (a - abare) / (ahh - abare), (a - abare) / (ahs - abare)))
    print("\nOverhead ratio of `@m.task` (summary) to hand-written code (target <= 1.0):\n")
    print("| | vs hand-written Histogram | vs hand-written Summary |")
    print("|---|---|---|")
    for name, vh, vs in rows:
        print(f"| {name} | {vh:.2f} | {vs:.2f} |")

    print("\n## observe() per call (µs)\n")
    r = CollectorRegistry()
    ps = Summary("ps", "d", registry=r)
    ph = Histogram("ph", "d", registry=r)
    qs = QuantileSummary("qs", "d", registry=r)
    qsl = QuantileSummary("qsl", "d", ["a"], registry=r).labels("x")
    times = {
        "prometheus_client Summary.observe (no quantiles)": per_call(lambda: ps.observe(0.37)),
        "prometheus_client Histogram.observe": per_call(lambda: ph.observe(0.37)),
        "jobmetrics QuantileSummary.observe": per_call(lambda: qs.observe(0.37)),
        "jobmetrics QuantileSummary.labels(..) child observe": per_call(lambda: qsl.observe(0.37)),
    }
    try:
        from prometheus_summary import Summary as PSummary

        pss = PSummary("pss", "d", registry=r)
        times["prometheus-summary Summary.observe"] = per_call(
            lambda: pss.observe(0.37), number=20_000, repeat=3)
    except ImportError:
        print("(prometheus-summary not installed: pip install -e '.[bench]')\n")
    print("| observe | µs |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {us(t)} |")
    ratio = times["jobmetrics QuantileSummary.observe"] / times[
        "prometheus_client Histogram.observe"]
    print(f"\nQuantileSummary / Histogram observe: {ratio:.2f} (target <= 1.5)\n")

    print("## Memory of one summary child\n")
    n_total = int(os.environ.get("BENCH_OBSERVATIONS", "10000000"))
    child = QuantileSummary("mem", "d", ["a"], registry=None).labels("x")
    import random

    rnd = random.Random(1)
    values = [rnd.lognormvariate(-3, 2) for _ in range(100_000)]
    print("| observations | sketch buckets held | max RSS (MiB) |")
    print("|---|---|---|")
    done = 0
    while done < n_total:
        for v in values:
            child.observe(v)
        done += len(values)
        if done in (1_000_000, n_total) or done % 5_000_000 == 0:
            gc.collect()
            # sketch buckets held: the window's (WSUM, slot, code) cells of the child
            held = sum(1 for key in child._store.handles if key[2][0] == 2)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {done:,} | {held} | {rss:.1f} |")


if __name__ == "__main__":
    main()
