"""Soak: an hour of a job service compressed into minutes, in both modes, with scrapes.

Windows are shortened (6 s instead of 10 minutes, so they turn over as often as in ten
hours), and four threads run tasks of 20 types (success, fail, stop), HTTP requests
through WSGIMiddleware, queue puts and gets, while a scraper scrapes every 50 ms. At the
start and the end it reports the process's RSS, open file descriptors and threads: a
leak of any of them grows with the work done.

Run: .venv/bin/python bench/bench_soak.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

from prometheus_client import CollectorRegistry, generate_latest

from jobmetrics import JobMetrics, Stopped, WSGIMiddleware


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _state() -> Tuple[float, int, int]:
    return _rss_mib(), len(os.listdir("/proc/self/fd")), threading.active_count()


def soak(m: JobMetrics, seconds: float) -> Dict[str, Any]:
    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, metrics=m, operation=lambda e: e["PATH_INFO"])
    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda item: item[0])
    stop = threading.Event()
    done = [0]

    def worker(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i += 1
            t = f"type{i % 20}"
            try:
                with m.track_task(t):
                    if i % 7 == 0:
                        raise RuntimeError
                    if i % 11 == 0:
                        raise Stopped
            except (RuntimeError, Stopped):
                pass
            body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": f"/r{i % 5}"}, lambda *a: None)
            for _ in body:
                pass
            body.close()  # type: ignore[attr-defined]
            q.put((t, i))
            q.get()
            done[0] += 1

    scrapes = [0]

    def scraper() -> None:
        while not stop.is_set():
            generate_latest(m.registry)
            scrapes[0] += 1
            time.sleep(0.05)

    generate_latest(m.registry)
    start = _state()
    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    threads.append(threading.Thread(target=scraper))
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    generate_latest(m.registry)
    end = _state()
    return {"start": start, "end": end, "units": done[0], "scrapes": scrapes[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0, help="per mode")
    args = p.parse_args()
    rows = []
    for mode in ("in-process", "multi-process"):
        with tempfile.TemporaryDirectory() as d:
            m = JobMetrics(registry=CollectorRegistry(), process_collectors=False,
                           max_age=6.0, success_rate_window=6.0,
                           multiprocess_dir=d if mode == "multi-process" else "")
            rows.append((mode, soak(m, args.seconds)))
    print(f"{args.seconds:g} s per mode, windows of 6 s\n")
    print("| mode | units of work | scrapes | RSS MiB start -> end | open fds | threads |")
    print("|---|---|---|---|---|---|")
    for mode, r in rows:
        (r0, f0, t0), (r1, f1, t1) = r["start"], r["end"]
        print(f"| {mode} | {r['units']:,} | {r['scrapes']:,} | {r0:.1f} -> {r1:.1f} | "
              f"{f0} -> {f1} | {t0} -> {t1} |")


if __name__ == "__main__":
    main()
