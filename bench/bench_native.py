"""Native histograms: the p99 error of ``histogram_quantile`` on classic default buckets,
on native buckets of each schema, and of the summary, against exact quantiles of the same
data; and scrape time, text vs protobuf, for 1,000 native series.

``histogram_quantile`` is computed as Prometheus 2.42 does (rank ``q * count``, linear
interpolation inside the bucket; tests/test_native.py checks a real Prometheus agrees
within a bucket).

Run: .venv/bin/python bench/bench_native.py
"""

from __future__ import annotations

import math
import random
import time
from typing import Dict, List, Sequence, Tuple

from prometheus_client import CollectorRegistry, generate_latest

from jobmetrics import DEFAULT_BUCKETS, JobMetrics, QuantileSketch
from jobmetrics.protobuf import encode
from jobmetrics.schemas import index


def classic_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float:
    """Prometheus's bucketQuantile on per-bucket counts (last bucket +Inf)."""
    total = sum(counts)
    rank = q * total
    acc = 0
    for i, n in enumerate(counts):
        if acc + n >= rank:
            if i == len(bounds):  # +Inf bucket: the highest finite bound
                return bounds[-1]
            lo = 0.0 if i == 0 else bounds[i - 1]
            return lo + (bounds[i] - lo) * (rank - acc) / n
        acc += n
    return bounds[-1]


def native_quantile(q: float, buckets: Dict[int, int], schema: int) -> float:
    """Prometheus 2.42's histogram_quantile on positive native buckets."""
    base = 2 ** (2 ** -schema)
    total = sum(buckets.values())
    rank = q * total
    acc = 0
    for i in sorted(buckets):
        n = buckets[i]
        if acc + n >= rank:
            lo, hi = base ** (i - 1), base ** i
            return lo + (hi - lo) * (rank - acc) / n
        acc += n
    return math.nan


def errors(values: List[float], q: float) -> List[Tuple[str, float]]:
    ordered = sorted(values)
    exact = ordered[math.ceil(q * len(ordered)) - 1]
    rows = []
    counts = [0] * (len(DEFAULT_BUCKETS) + 1)
    from bisect import bisect_left
    for v in values:
        counts[bisect_left(DEFAULT_BUCKETS, v)] += 1
    rows.append(("classic, default buckets", classic_quantile(q, DEFAULT_BUCKETS, counts)))
    for schema in (8, 6, 4, 2, 0):
        b: Dict[int, int] = {}
        for v in values:
            k = index(v, schema)
            b[k] = b.get(k, 0) + 1
        rows.append((f"native, schema {schema} ({len(b)} buckets)",
                     native_quantile(q, b, schema)))
    sk = QuantileSketch()
    sk.extend(values)
    rows.append(("summary (sketch, schema 6)", sk.quantile(q)))
    return [(name, abs(v - exact) / exact) for name, v in rows]


def observe_costs() -> None:
    """Per-call cost by duration kind, in one interleaved run."""
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from prometheus_client import Histogram
    from timing import per_call

    def trivial() -> int:
        return 1

    kinds = ("summary", "histogram", "native")
    ms = {k: JobMetrics(registry=CollectorRegistry(), task_duration=k,
                        process_collectors=False) for k in kinds}
    tasks = {k: m.task("t")(trivial) for k, m in ms.items()}
    observers = {k: m.queue_waits.observer("q")  # type: ignore[union-attr]
                 for k, m in ms.items()}
    hist = Histogram("h", "d", registry=CollectorRegistry())
    pc = time.perf_counter
    best: Dict[str, float] = {}

    def keep(name: str, t: float) -> None:
        best[name] = min(best.get(name, math.inf), t)

    for _ in range(5):
        bare = per_call(trivial)
        for k in kinds:
            keep(f"`@m.task`, {k} (over the bare call)", per_call(tasks[k]) - bare)
            keep(f"one observation, {k} (`queue_wait_seconds`)",
                 per_call(lambda o=observers[k]: o(0.37, pc())))  # type: ignore[misc]
        keep("prometheus_client `Histogram.observe`", per_call(lambda: hist.observe(0.37)))
    print("## Cost per call by duration kind (µs)\n")
    print("| call | µs |")
    print("|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t * 1e6:.3f} |")
    print()


def main() -> None:
    observe_costs()
    rng = random.Random(1)
    data = {
        "log-normal (median 0.2 s, sigma 1)": [rng.lognormvariate(math.log(0.2), 1.0)
                                               for _ in range(100_000)],
        "exponential (mean 3 s)": [rng.expovariate(1 / 3) for _ in range(100_000)],
        "uniform 1-2 s": [rng.uniform(1.0, 2.0) for _ in range(100_000)],
    }
    print("## p99 relative error vs the exact p99 of the same 100,000 values\n")
    names = list(data)
    table = {n: dict(errors(v, 0.99)) for n, v in data.items()}
    rows = list(table[names[0]])
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, _ in enumerate(rows):
        cells = [f"{list(table[n].values())[i] * 100:.2f}%" for n in names]
        label = rows[i] if "native" not in rows[i] else rows[i].split(" (")[0]
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\n## Scrape of 1,000 native series (ms)\n")
    m = JobMetrics(registry=CollectorRegistry(), task_duration="native",
                   process_collectors=False)
    assert m.queue_waits is not None
    now = time.perf_counter()
    for i in range(1000):
        observe = m.queue_waits.observer(f"q{i}")
        for v in data[names[0]][i * 20:(i + 1) * 20]:
            observe(v, now)
    for name, fn in (("text", lambda: generate_latest(m.registry)),
                     ("protobuf", lambda: encode(m.registry.collect()))):
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            body = fn()
            best = min(best, time.perf_counter() - t0)
        print(f"| {name} | {best * 1e3:.1f} ms | {len(body)} bytes |")


if __name__ == "__main__":
    main()
