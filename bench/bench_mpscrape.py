"""Multi-process scrape: prometheus_client's MultiProcessCollector against jobmetrics, the
same families on both sides, live worker processes scraped from a separate process.

Each worker process runs 5 task types x 20 tasks (18 succeed, 2 fail) and records a task
counter by type and status, a duration (histogram, or summary) by type and status, and a
live-summed running gauge by type: by hand with prometheus_client (``Counter``,
``Histogram``/``Summary``, ``Gauge(multiprocess_mode="livesum")``, the same histogram
buckets), with ``m.track_task`` for jobmetrics. Then a separate process (forked from this
one, not a worker) scrapes the directory: ``MultiProcessCollector`` on a registry of its
own, or a ``JobMetrics`` on the directory (whose file, holding no task, makes one more
live process). Best of ``--repeat`` ``generate_latest`` calls, after one scrape untimed
(reported as "first": jobmetrics decodes the keys of a file once).

Run: .venv/bin/python bench/bench_mpscrape.py [--processes 1 4 16 64 128] [--repeat 15]
[--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import tempfile
import time
import timeit
from multiprocessing.connection import Connection
from typing import Dict, List, Sequence, Tuple

CTX = multiprocessing.get_context("fork")
TYPES, PER_TYPE, FAILS = 5, 20, 2
ENV = "PROMETHEUS_MULTIPROC_DIR"

#: (best ms, first ms, output bytes, series) of one scrape setup
Result = Tuple[float, float, int, int]


def _tasks() -> List[Tuple[str, bool]]:
    """Every worker's tasks: (type, fails), the types interleaved."""
    return [(f"type{i % TYPES}", i // TYPES >= PER_TYPE - FAILS)
            for i in range(TYPES * PER_TYPE)]


def _pc_worker(d: str, kind: str, ready: object, stop: object) -> None:
    os.environ[ENV] = d
    import prometheus_client.values

    importlib.reload(prometheus_client.values)  # the mmap values, as a real worker has
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

    from jobmetrics.settings import DEFAULT_BUCKETS

    r = CollectorRegistry()
    total = Counter("jobs_task", "Tasks.", ["type", "status"], registry=r)
    running = Gauge("jobs_running_task", "Running.", ["type"], registry=r,
                    multiprocess_mode="livesum")
    dur = (Histogram("jobs_task_process_time_seconds", "Durations.", ["type", "status"],
                     registry=r, buckets=DEFAULT_BUCKETS) if kind == "histogram" else
           Summary("jobs_task_process_time_seconds", "Durations.", ["type", "status"],
                   registry=r))
    pc = time.perf_counter
    for t, fails in _tasks():
        running.labels(t).inc()
        start = pc()
        running.labels(t).dec()
        status = "fail" if fails else "success"
        total.labels(t, status).inc()
        dur.labels(t, status).observe(pc() - start)
    ready.release()  # type: ignore[attr-defined]
    stop.wait(600)  # type: ignore[attr-defined]


def _jm_worker(d: str, kind: str, ready: object, stop: object) -> None:
    from prometheus_client import CollectorRegistry

    from jobmetrics import JobMetrics

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d, task_duration=kind,
                   process_collectors=False)
    for t, fails in _tasks():
        try:
            with m.track_task(t):
                if fails:
                    raise RuntimeError
        except RuntimeError:
            pass
    ready.release()  # type: ignore[attr-defined]
    stop.wait(600)  # type: ignore[attr-defined]


def _series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def _scrape(side: str, d: str, kind: str, repeat: int, conn: Connection) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    r = CollectorRegistry()
    if side == "pc":
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(r, path=d)
    else:
        from jobmetrics import JobMetrics

        JobMetrics(registry=r, multiprocess_dir=d, task_duration=kind,
                   process_collectors=False)
    t0 = time.perf_counter()
    out = generate_latest(r)
    first = time.perf_counter() - t0
    best = min(timeit.repeat(lambda: generate_latest(r), number=1, repeat=repeat))
    conn.send((best * 1e3, first * 1e3, len(out), _series(out)))


def measure(side: str, n: int, kind: str, repeat: int) -> Result:
    """Start ``n`` workers of ``side`` ("pc" or "jm"), scrape from another process."""
    worker = _pc_worker if side == "pc" else _jm_worker
    with tempfile.TemporaryDirectory() as d:
        ready, stop = CTX.Semaphore(0), CTX.Event()
        procs = [CTX.Process(target=worker, args=(d, kind, ready, stop)) for _ in range(n)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        recv, send = CTX.Pipe(duplex=False)
        scraper = CTX.Process(target=_scrape, args=(side, d, kind, repeat, send))
        scraper.start()
        result: Result = recv.recv()
        scraper.join()
        stop.set()
        for p in procs:
            p.join()
    return result


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
            / sum((x - mx) ** 2 for x in xs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 4, 16, 64, 128])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2,
                   help="setups per case, the sides taking turns; the best is shown")
    args = p.parse_args()
    for kind in ("histogram", "summary"):
        rows: Dict[int, Dict[str, Result]] = {}
        for n in args.processes:
            rows[n] = {}
            for _ in range(args.rounds):
                for side in ("pc", "jm"):
                    got = measure(side, n, kind, args.repeat)
                    if side not in rows[n] or got[0] < rows[n][side][0]:
                        rows[n][side] = got
        print(f"\n## {kind} durations: scrape ms (best of {args.repeat}), live processes\n")
        print("| live processes | prometheus_client MultiProcessCollector | "
              "jobmetrics multi-process | ratio | jobmetrics first scrape |")
        print("|---|---|---|---|---|")
        for n, r in rows.items():
            pc, jm = r["pc"], r["jm"]
            print(f"| {n} | {pc[0]:.2f} ms ({pc[2] / 1000:.1f} KB, {pc[3]} series) | "
                  f"{jm[0]:.2f} ms ({jm[2] / 1000:.1f} KB, {jm[3]} series) | "
                  f"{jm[0] / pc[0]:.2f} | {jm[1]:.2f} ms |")
        ns = list(rows)
        if len(ns) >= 2:
            print("\n| per extra live process (least squares) | prometheus_client | "
                  "jobmetrics |")
            print("|---|---|---|")
            print(f"| ms | {_slope(ns, [rows[n]['pc'][0] for n in ns]):.3f} | "
                  f"{_slope(ns, [rows[n]['jm'][0] for n in ns]):.3f} |")
        print("\n| µs per emitted series | prometheus_client | jobmetrics |")
        print("|---|---|---|")
        for n in ns:
            pc, jm = rows[n]["pc"], rows[n]["jm"]
            print(f"| {n} live | {pc[0] * 1e3 / pc[3]:.2f} | {jm[0] * 1e3 / jm[3]:.2f} |")


if __name__ == "__main__":
    main()
