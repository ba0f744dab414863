"""Multi-process mode: per-call cost of @m.task, and scrape time against the number of
live worker processes and of processes that have come and gone.

Run: .venv/bin/python bench/bench_multiprocess.py
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from timing import per_call, us

CTX = multiprocessing.get_context("fork")


def trivial() -> int:
    return 1


def task_cost() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        import prometheus_client
        import prometheus_client.values

        importlib.reload(prometheus_client.values)  # pick the mmap values up
        importlib.reload(prometheus_client.metrics)
        from prometheus_client import CollectorRegistry
        from prometheus_client.metrics import Counter, Gauge, Histogram

        from jobmetrics import JobMetrics

        r = CollectorRegistry()
        total = Counter("t_task", "d", ["type", "status"], registry=r)
        running = Gauge("t_running", "d", ["type"], registry=r, multiprocess_mode="livesum")
        ptime = Histogram("t_ptime", "d", ["type", "status"], registry=r)
        pc = time.perf_counter
        c, g, h = total.labels("t", "success"), running.labels("t"), ptime.labels("t", "success")

        def hand() -> int:
            g.inc()
            start = pc()
            result = trivial()
            g.dec()
            c.inc()
            h.observe(pc() - start)
            return result

        def hand_lookup() -> int:
            running.labels("t").inc()
            start = pc()
            result = trivial()
            running.labels("t").dec()
            total.labels("t", "success").inc()
            ptime.labels("t", "success").observe(pc() - start)
            return result

        m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
        mh = JobMetrics("h", registry=CollectorRegistry(), multiprocess_dir=d,
                        task_duration="histogram")
        bare = per_call(trivial)
        rows = {
            "bare call": bare,
            "prometheus_client multiprocess, children bound once "
            "(Gauge inc/dec + Counter.inc + Histogram.observe)": per_call(hand),
            "prometheus_client multiprocess, labels() per call": per_call(hand_lookup),
            "`@m.task`, multi-process, summary (quantiles)": per_call(m.task("t")(trivial)),
            "`@m.task`, multi-process, histogram": per_call(mh.task("t")(trivial)),
        }
        print("## @m.task in multi-process mode (µs per call)\n")
        print("| call | µs |")
        print("|---|---|")
        for name, t in rows.items():
            print(f"| {name} | {us(t)} |")
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _worker(d: str, ready, stop) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from jobmetrics import JobMetrics

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
    for i in range(200):
        with m.track_task(f"type{i % 5}"):
            pass
    ready.release()
    stop.wait(120)


def _short(d: str) -> None:
    from prometheus_client import CollectorRegistry

    from jobmetrics import JobMetrics

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
    for i in range(20):
        with m.track_task(f"type{i % 5}"):
            pass


def scrape_time() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from jobmetrics import JobMetrics

    print("\n## Scrape time (ms) against live processes (5 task types each)\n")
    print("| live processes | scrape ms |")
    print("|---|---|")
    for n in (1, 4, 16, 64):
        with tempfile.TemporaryDirectory() as d:
            ready, stop = CTX.Semaphore(0), CTX.Event()
            procs = [CTX.Process(target=_worker, args=(d, ready, stop)) for _ in range(n - 1)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.acquire()
            m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
            for i in range(200):
                with m.track_task(f"type{i % 5}"):
                    pass
            best = min(_timed(generate_latest, m.registry) for _ in range(5))
            print(f"| {n} | {best * 1000:.1f} |")
            stop.set()
            for p in procs:
                p.join()

    print("\n## Scrape time (ms) after processes came and went (1 live)\n")
    print("| processes that exited | scrape ms |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as d:
        m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
        exited = 0
        for target in (0, 50, 200):
            while exited < target:
                p = CTX.Process(target=_short, args=(d,))
                p.start()
                p.join()
                exited += 1
            generate_latest(m.registry)  # the first scrape folds the dead files
            best = min(_timed(generate_latest, m.registry) for _ in range(5))
            print(f"| {exited} | {best * 1000:.1f} |")


def _timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


if __name__ == "__main__":
    task_cost()
    scrape_time()
