"""Hostile data in Redis: one bad queue costs only its own values, and every read is bounded."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from rq import Queue

from exporter_support import RedisServer, command_counts, enqueue, lock
from jobmetrics.exporter import RedisExporter
from promcheck import promtool_check, samples, scrape, value

NS = "{harbor_job_service_namespace}"
DEEP = 100_000  # far beyond the interpreter's recursion limit


def net_out(r: Any) -> int:
    """Bytes Redis has sent to its clients so far."""
    return int(r.info("stats")["total_net_output_bytes"])


def bytes_of_one_scrape(r: Any, registry: CollectorRegistry) -> int:
    before = net_out(r)
    text = scrape(registry)
    after = net_out(r)
    promtool_check(text)
    return after - before


def test_deeply_nested_tail_job_drops_only_that_latency(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    now = time.time()
    nested = "[" * DEEP + "]" * DEEP
    # Nesting before the enqueue time: no latency for that type.
    r.sadd(NS + ":known_jobs", "DEEP")
    r.lpush(NS + ":jobs:DEEP", '{"name":"DEEP","id":"1","args":' + nested + ',"t":1}')
    # Nesting after it: gocraft/work's order (name, id, t, args); the time is read.
    r.sadd(NS + ":known_jobs", "DEEP_ARGS")
    r.lpush(NS + ":jobs:DEEP_ARGS",
            f'{{"name":"DEEP_ARGS","id":"2","t":{int(now - 40)},"args":{{"a":{nested}}}}}')
    # An enqueue time no float holds.
    r.sadd(NS + ":known_jobs", "HUGE_T")
    r.lpush(NS + ":jobs:HUGE_T", '{"name":"HUGE_T","id":"3","t":1' + "0" * 400 + "}")
    enqueue(r, NS, "GOOD", now - 30)
    RedisExporter(redis_server.url(), registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_queue_size", (("type", "HUGE_T"),))] == 1
    assert ("harbor_task_queue_latency", (("type", "HUGE_T"),)) not in got
    assert got[("harbor_task_queue_size", (("type", "DEEP"),))] == 1
    assert ("harbor_task_queue_latency", (("type", "DEEP"),)) not in got
    assert 39 <= got[("harbor_task_queue_latency", (("type", "DEEP_ARGS"),))] <= 100
    assert 29 <= got[("harbor_task_queue_latency", (("type", "GOOD"),))] <= 100


def test_deeply_nested_celery_message_drops_only_that_latency(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    from celery.signals import before_task_publish

    from jobmetrics.exporter import stamp_enqueue_time

    app = Celery("t", broker=redis_server.url(), set_as_current=False)
    before_task_publish.connect(stamp_enqueue_time, weak=False)
    try:
        app.send_task("t.a", queue="good")
    finally:
        before_task_publish.disconnect(stamp_enqueue_time)
        app.close()
    r = redis_server.client()
    r.lpush("deep", "[" * DEEP + "]" * DEEP)
    RedisExporter(redis_server.url(), layout="celery", queues=["good", "deep"],
                  registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_queue_size", (("queue", "deep"),))] == 1
    assert ("harbor_task_queue_latency", (("queue", "deep"),)) not in got
    assert 0 <= got[("harbor_task_queue_latency", (("queue", "good"),))] < 60


def test_a_huge_tail_job_is_read_as_a_bounded_prefix(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    now = time.time()
    big = json.dumps({"name": "BIG", "id": "0123456789abcdef01234567", "t": int(now - 50),
                      "args": {"blob": "x" * (16 << 20)}})  # 16 MiB
    r.sadd(NS + ":known_jobs", "BIG")
    r.lpush(NS + ":jobs:BIG", big)
    RedisExporter(redis_server.url(), registry=registry)
    sent = [bytes_of_one_scrape(r, registry) for _ in range(3)]
    # Each scrape gets at most HarborLayout.job_prefix_bytes of the job, not 16 MiB.
    assert all(n < 64 * 1024 for n in sent), sent
    latency = value(registry, "harbor_task_queue_latency", type="BIG")
    assert latency is not None and 49 <= latency <= 120
    assert value(registry, "harbor_task_queue_size", type="BIG") == 1
    # Redis copies the element to cut it: while the list keeps its length, the same
    # oversized tail is not read again.
    r.config_resetstat()
    scrape(registry)
    assert "lindex" not in command_counts(r)
    # A new job at the head: the tail is read again (and is still the big one).
    enqueue(r, NS, "BIG", now - 5)
    r.config_resetstat()
    latency = value(registry, "harbor_task_queue_latency", type="BIG")
    assert latency is not None and 49 <= latency <= 120
    assert command_counts(r)["lindex"] == 1
    # A worker takes the big one: the next tail is the new job.
    r.rpop(NS + ":jobs:BIG")
    latency = value(registry, "harbor_task_queue_latency", type="BIG")
    assert latency is not None and 4 <= latency <= 60


def test_a_huge_celery_message_is_not_sent(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    message = json.dumps({"body": "x" * (8 << 20), "headers": {
        "jobmetrics_enqueued_at": time.time()}, "properties": {}})
    r.lpush("bulk", message)
    RedisExporter(redis_server.url(), layout="celery", queues=["bulk"], registry=registry)
    assert bytes_of_one_scrape(r, registry) < 64 * 1024
    got = samples(scrape(registry))
    assert got[("harbor_task_queue_size", (("queue", "bulk"),))] == 1
    assert ("harbor_task_queue_latency", (("queue", "bulk"),)) not in got  # > 1 MiB
    assert got[("harbor_task_exporter_up", ())] == 1


def test_a_huge_rq_head_entry_is_not_sent(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    Queue("fine", connection=r).enqueue("os.getcwd")
    r.rpush("rq:queue:junk", "j" * (8 << 20))
    r.sadd("rq:queues", "rq:queue:junk")
    RedisExporter(redis_server.url(), layout="rq", registry=registry)
    assert bytes_of_one_scrape(r, registry) < 64 * 1024
    got = samples(scrape(registry))
    assert got[("harbor_task_queue_size", (("queue", "junk"),))] == 1
    assert ("harbor_task_queue_latency", (("queue", "junk"),)) not in got
    assert ("harbor_task_queue_latency", (("queue", "fine"),)) in got


def test_failures_are_logged_once_per_place_not_per_queue(
    redis_server: RedisServer, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_server.client()
    pipe = r.pipeline()
    for i in range(300):
        pipe.sadd(NS + ":known_jobs", f"WRONG{i}")
        pipe.set(f"{NS}:jobs:WRONG{i}", "not a list")  # WRONGTYPE for every one
        pipe.sadd(NS + ":known_jobs", f"UNDECODABLE{i}")
        pipe.lpush(f"{NS}:jobs:UNDECODABLE{i}", "not json")
    pipe.execute()
    enqueue(r, NS, "GC", time.time())
    RedisExporter(redis_server.url(), max_queues=1000, registry=registry)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert value(registry, "harbor_task_queue_size", type="GC") == 1
    # New names of the same failures: still nothing more in the log.
    for i in range(300, 400):
        r.sadd(NS + ":known_jobs", f"WRONG{i}")
        r.set(f"{NS}:jobs:WRONG{i}", "not a list")
    assert value(registry, "harbor_task_exporter_up") == 1
    wrong = [rec for rec in caplog.records if "'WRONG" in rec.getMessage()]
    undecodable = [rec for rec in caplog.records if "'UNDECODABLE" in rec.getMessage()]
    assert len(wrong) == 1, [rec.getMessage() for rec in caplog.records][:5]
    assert len(undecodable) == 1
    assert "reading queue 'WRONG" in wrong[0].getMessage()
    assert wrong[0].getMessage().endswith("(logged once)")


def test_lock_info_with_200k_fields_is_bounded(
    redis_server: RedisServer, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "FLOOD", time.time())
    key = NS + ":jobs:FLOOD:lock_info"
    for start in range(0, 200_000, 20_000):
        r.hset(key, mapping={f"pool-{i:06d}": 1 for i in range(start, start + 20_000)})
    enqueue(r, NS, "GC", time.time())
    lock(r, NS, "GC", "pool-a", 2)
    lock(r, NS, "GC", "pool-b", 1)
    RedisExporter(redis_server.url(), max_pools=7, registry=registry)
    sent = bytes_of_one_scrape(r, registry)
    got = samples(scrape(registry))
    flood = {k[1]: v for k, v in got.items()
             if k[0] == "harbor_task_concurrency" and ("type", "FLOOD") in k[1]}
    assert len(flood) == 7 and set(flood.values()) == {1.0}
    assert got[("harbor_task_concurrency", (("pool", "pool-a"), ("type", "GC")))] == 2
    assert got[("harbor_task_concurrency", (("pool", "pool-b"), ("type", "GC")))] == 1
    assert sent < 16 * 1024, sent  # a few dozen fields, not 200k
    assert got[("harbor_task_exporter_up", ())] == 1
    assert sum("more than 7 worker pools" in rec.getMessage() for rec in caplog.records) == 1


def test_max_pools_is_validated(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="max_pools must be an int >= 1, got 0"):
        RedisExporter(redis_server.url(), max_pools=0, registry=None)


CLOSE_SCRIPT = textwrap.dedent("""
    import sys
    import redis
    from prometheus_client import CollectorRegistry, generate_latest
    from jobmetrics.exporter import RedisExporter

    client = redis.Redis(port=int(sys.argv[1]))  # no socket timeout: waits forever
    registry = CollectorRegistry()
    exporter = RedisExporter(client=client, timeout=0.5, registry=registry)
    print([l for l in generate_latest(registry).decode().splitlines()
           if l.startswith("harbor_task_exporter_up")][0], flush=True)
    sys.stdin.readline()  # the test stalls Redis now
    print([l for l in generate_latest(registry).decode().splitlines()
           if l.startswith("harbor_task_exporter_up")][0], flush=True)
    exporter.close()
""")


def test_close_returns_and_the_process_exits_with_a_read_stuck_on_a_client_without_timeout(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(CLOSE_SCRIPT)
    assert redis_server.proc is not None
    proc = subprocess.Popen([sys.executable, str(script), str(redis_server.port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "harbor_task_exporter_up 1.0"
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # the server the test started
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "harbor_task_exporter_up 0.0"
        # The read thread still waits on Redis, without a timeout; the process exits.
        assert proc.wait(timeout=30) == 0
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
