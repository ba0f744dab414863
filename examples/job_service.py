"""A small job service with metrics: workers run replication, gc and scan jobs.

Run it and open the printed URL; stop with Ctrl-C (or pass --duration SECONDS).
For a fuller service (an HTTP API, an instrumented queue and worker pool, every family
moving) run `jobmetrics demo` (src/jobmetrics/demo.py, docs/demo.md).
"""

from __future__ import annotations

import argparse
import random
import threading
import time

from jobmetrics import JobMetrics, Stopped

m = JobMetrics()


@m.task("replication")
def replicate(size: int) -> int:
    time.sleep(random.uniform(0.01, 0.2))
    if random.random() < 0.1:
        raise RuntimeError("registry unreachable")
    return size


@m.task("gc")
def garbage_collect() -> None:
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.05:
        raise Stopped("stopped by an operator")


@m.task("scan")
def scan(image: str) -> str:
    time.sleep(random.uniform(0.02, 0.1))
    return image


def worker(stop: threading.Event) -> None:
    jobs = [lambda: replicate(10), garbage_collect, lambda: scan("library/nginx")]
    while not stop.is_set():
        try:
            random.choice(jobs)()
        except (RuntimeError, Stopped):
            pass  # the metrics counted it as fail or stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--addr", default="127.0.0.1")
    parser.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    args = parser.parse_args()
    served = m.start_http_server(args.port, args.addr)
    assert served is not None
    server, _ = served
    print(f"metrics at http://{args.addr}:{server.server_port}{m.path}", flush=True)
    stop = threading.Event()
    m.set_info(pool="example", workers=4)
    for _ in range(4):
        threading.Thread(target=worker, args=(stop,), daemon=True).start()
    try:
        if args.duration:
            time.sleep(args.duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    stop.set()
    server.shutdown()


if __name__ == "__main__":
    main()
