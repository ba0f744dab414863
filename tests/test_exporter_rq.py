"""The `rq` layout, on data written by RQ itself (and one real RQ worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry
from rq import Queue

from exporter_support import RedisServer
from jobmetrics.exporter import RedisExporter
from promcheck import promtool_check, samples, scrape, value


def test_sizes_latency_and_scheduled(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    high, low = Queue("high", connection=r), Queue("low", connection=r)
    first = high.enqueue("os.getcwd")
    high.enqueue("os.getcwd")
    high.enqueue("os.getcwd")
    low.enqueue("os.getcwd")
    low.enqueue_in(timedelta(minutes=10), "os.getcwd")
    low.enqueue_in(timedelta(minutes=20), "os.getcwd")
    Queue("idle", connection=r).enqueue("os.getcwd").delete()  # a known, empty queue
    # The oldest job waited 40 s: set its enqueue time as RQ stores it.
    first.enqueued_at = datetime.now(timezone.utc) - timedelta(seconds=40)
    first.save()

    RedisExporter(redis_server.url(), layout="rq", registry=registry)
    start = time.time()
    text = scrape(registry)
    got = samples(text)
    assert {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"} == {
        (("queue", "high"),): 3, (("queue", "low"),): 1, (("queue", "idle"),): 0,
    }
    assert 40 <= got[("harbor_task_queue_latency", (("queue", "high"),))] <= 41 + (
        time.time() - start
    )
    assert got[("harbor_task_queue_latency", (("queue", "low"),))] < 30
    assert got[("harbor_task_queue_latency", (("queue", "idle"),))] == 0
    assert got[("harbor_task_scheduled", (("queue", "low"),))] == 2
    assert got[("harbor_task_scheduled", (("queue", "high"),))] == 0
    assert got[("harbor_task_concurrency", (("queue", "high"),))] == 0
    promtool_check(text)


def test_future_enqueued_at_gives_zero_latency(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    job = Queue("default", connection=redis_server.client()).enqueue("os.getcwd")
    job.enqueued_at = datetime.now(timezone.utc) + timedelta(hours=1)  # skewed clock
    job.save()
    RedisExporter(redis_server.url(), layout="rq", registry=registry)
    assert value(registry, "harbor_task_queue_latency", queue="default") == 0


def test_deleted_job_hash_leaves_latency_out(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    job = Queue("default", connection=r).enqueue("os.getcwd")
    r.delete(job.key)  # expired or deleted under its id: its age is unknown
    RedisExporter(redis_server.url(), layout="rq", registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_queue_size", (("queue", "default"),))] == 1
    assert ("harbor_task_queue_latency", (("queue", "default"),)) not in got
    assert got[("harbor_task_exporter_up", ())] == 1


def test_named_queues_only(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    r = redis_server.client()
    Queue("a", connection=r).enqueue("os.getcwd")
    Queue("b", connection=r).enqueue("os.getcwd")
    RedisExporter(redis_server.url(), layout="rq", queues=["b", "never"], registry=registry)
    got = samples(scrape(registry))
    sizes = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}
    assert sizes == {(("queue", "b"),): 1, (("queue", "never"),): 0}


def test_running_job_of_a_real_worker_counts(
    redis_server: RedisServer, registry: CollectorRegistry, tmp_path: Path
) -> None:
    r = redis_server.client()
    q = Queue("work", connection=r)
    q.enqueue("time.sleep", 60, job_timeout=120)
    q.enqueue("os.getcwd")
    exporter = RedisExporter(redis_server.url(), layout="rq", registry=registry)
    assert value(registry, "harbor_task_concurrency", queue="work") == 0
    rq_bin = Path(sys.executable).with_name("rq")
    # SimpleWorker runs the job in its own process: killing it leaves nothing behind.
    worker = subprocess.Popen(
        [str(rq_bin), "worker", "-w", "rq.worker.SimpleWorker", "-u", redis_server.url(),
         "work"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": ""},
    )
    try:
        deadline = time.monotonic() + 60
        while value(registry, "harbor_task_concurrency", queue="work") != 1:
            assert time.monotonic() < deadline, "the worker never started the job"
            time.sleep(0.1)
        assert value(registry, "harbor_task_queue_size", queue="work") == 1
    finally:
        worker.kill()
        worker.wait(10)
    exporter.close()


def test_key_of_unexpected_type_leaves_only_that_queue_out(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    Queue("good", connection=r).enqueue("os.getcwd")
    r.sadd("rq:queues", "rq:queue:odd")
    r.hset("rq:queue:odd", "not", "a list")
    RedisExporter(redis_server.url(), layout="rq", registry=registry)
    got = samples(scrape(registry))
    sizes = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}
    assert sizes == {(("queue", "good"),): 1}
    assert got[("harbor_task_exporter_up", ())] == 1
