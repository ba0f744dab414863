"""Scrape time of the Redis exporter against queue length and number of queues.

Starts its own redis-server (no persistence) on a free loopback port, fills it, and times
a full scrape (``generate_latest`` of a registry holding only the exporter), best of N.
For the ``rq`` layout it also times the hand-written way with RQ's own API (what
``rq-exporter``-style collectors do: ``Queue.all()``, ``count``, the registries'
``count``, ``Job.fetch`` of the head job), which costs round trips per queue. Last, the
cost of a huge job at the tail of a ``harbor`` queue: the first scrape (Redis copies the
job once to cut its prefix), the next ones, and the bytes Redis sends per scrape
(``total_net_output_bytes``).

    .venv/bin/python bench/bench_exporter.py
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from typing import Any, Callable, List

import redis
from prometheus_client import CollectorRegistry, generate_latest
from rq import Queue
from rq.job import Job

from jobmetrics.exporter import RedisExporter

NS = "{harbor_job_service_namespace}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def best(fn: Callable[[], Any], repeat: int = 15) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def fill_harbor(r: Any, queues: int, length: int) -> None:
    job = b'{"name":"J","id":"0123456789abcdef01234567","t":%d,"args":{}}' % int(time.time())
    for q in range(queues):
        name = f"JOB_{q}"
        r.sadd(NS + ":known_jobs", name)
        for start in range(0, length, 20_000):
            r.lpush(f"{NS}:jobs:{name}", *([job] * min(20_000, length - start)))
        r.hincrby(f"{NS}:jobs:{name}:lock_info", "pool-1", 1)


def fill_rq(r: Any, queues: int, length: int) -> None:
    for q in range(queues):
        Queue(f"q{q}", connection=r).enqueue("os.getcwd")
        for start in range(1, length, 20_000):
            ids = [str(uuid.uuid4()) for _ in range(min(20_000, length - start))]
            r.rpush(f"rq:queue:q{q}", *ids)


def rq_by_hand(r: Any) -> Callable[[], None]:
    def scrape() -> None:
        for q in Queue.all(connection=r):
            q.count  # noqa: B018
            q.started_job_registry.count  # noqa: B018
            q.scheduled_job_registry.count  # noqa: B018
            ids = q.get_job_ids(0, 1)
            if ids:
                job = Job.fetch(ids[0], connection=r)
                job.enqueued_at  # noqa: B018

    return scrape


def main() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            r = redis.Redis(port=port)
            for _ in range(200):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            run(r, port)
        finally:
            proc.terminate()
            proc.wait(10)


def run(r: Any, port: int) -> None:
    rows: List[str] = []
    print("| layout | queues | jobs per queue | scrape (ms) | rq's API by hand (ms) |")
    print("|---|---|---|---|---|")
    for layout, fill in (("harbor", fill_harbor), ("rq", fill_rq)):
        for queues, length in ((1, 1), (1, 1_000), (1, 200_000), (10, 10), (100, 10),
                               (500, 10)):
            r.flushall()
            fill(r, queues, length)
            registry = CollectorRegistry()
            exporter = RedisExporter(f"redis://127.0.0.1:{port}/0", layout=layout,
                                     timeout=30, registry=registry)
            generate_latest(registry)
            t = best(lambda reg=registry: generate_latest(reg))
            by_hand = ms(best(rq_by_hand(r))) if layout == "rq" else "n/a"
            exporter.close()
            row = f"| {layout} | {queues} | {length:,} | {ms(t)} | {by_hand} |"
            rows.append(row)
            print(row, flush=True)
    huge_tail(r, port)


def huge_tail(r: Any, port: int) -> None:
    print()
    print("| tail job | first scrape (ms) | next scrapes (ms) | bytes from Redis per scrape |")
    print("|---|---|---|---|")
    for size in (100, 1 << 20, 200 << 20):
        r.flushall()
        head = b'{"name":"BIG","id":"0123456789abcdef01234567","t":%d,"args":{"blob":"' % (
            int(time.time()))
        job = head + b"x" * max(0, size - len(head) - 3) + b'"}}'
        r.sadd(NS + ":known_jobs", "BIG")
        r.lpush(NS + ":jobs:BIG", job)
        del job
        registry = CollectorRegistry()
        exporter = RedisExporter(f"redis://127.0.0.1:{port}/0", timeout=60, registry=registry)
        start = time.perf_counter()
        generate_latest(registry)
        first = time.perf_counter() - start
        before = int(r.info("stats")["total_net_output_bytes"])
        generate_latest(registry)
        sent = int(r.info("stats")["total_net_output_bytes"]) - before
        t = best(lambda reg=registry: generate_latest(reg), repeat=5)
        exporter.close()
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size} B"
        print(f"| {label} | {ms(first)} | {ms(t)} | {sent:,} |", flush=True)


if __name__ == "__main__":
    main()
