"""The `harbor` layout (gocraft/work keys, as Harbor's jobservice writes them)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry

from exporter_support import RedisServer, command_counts, enqueue, lock, schedule
from jobmetrics.exporter import HarborLayout, RedisExporter
from promcheck import promtool_check, samples, scrape, value

NS = "{harbor_job_service_namespace}"


def make(server: RedisServer, registry: CollectorRegistry, **kw: object) -> RedisExporter:
    return RedisExporter(server.url(), registry=registry, **kw)  # type: ignore[arg-type]


def test_sizes_latency_concurrency_scheduled(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    now = time.time()
    for age in (100, 50, 10):  # oldest first, as they would have been enqueued
        enqueue(r, NS, "REPLICATION", now - age)
    enqueue(r, NS, "GARBAGE_COLLECTION", now - 5)
    r.sadd(NS + ":known_jobs", "SCAN_ALL")  # known type, nothing waiting
    lock(r, NS, "REPLICATION", "pool-a", 2)
    lock(r, NS, "REPLICATION", "pool-b", 1)
    lock(r, NS, "GARBAGE_COLLECTION", "pool-a", 1)
    for i in range(4):
        schedule(r, NS, "REPLICATION", now + 60 * (i + 1))

    make(redis_server, registry)
    start = time.time()
    text = scrape(registry)
    got = samples(text)
    assert got[("harbor_task_queue_size", (("type", "REPLICATION"),))] == 3
    assert got[("harbor_task_queue_size", (("type", "GARBAGE_COLLECTION"),))] == 1
    assert got[("harbor_task_queue_size", (("type", "SCAN_ALL"),))] == 0
    # gocraft/work's job JSON holds whole seconds: the oldest job waited 100 s (+ <1 s).
    latency = got[("harbor_task_queue_latency", (("type", "REPLICATION"),))]
    assert 99 <= latency <= 101 + (time.time() - start)
    assert got[("harbor_task_queue_latency", (("type", "SCAN_ALL"),))] == 0
    conc = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_concurrency"}
    assert conc == {
        (("pool", "pool-a"), ("type", "REPLICATION")): 2,
        (("pool", "pool-b"), ("type", "REPLICATION")): 1,
        (("pool", "pool-a"), ("type", "GARBAGE_COLLECTION")): 1,
    }
    assert got[("harbor_task_scheduled", ())] == 4
    assert ("harbor_task_scheduled_total", ()) not in got
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_exporter_read_errors_total", ())] == 0
    promtool_check(text)


def test_future_enqueue_time_gives_zero_latency(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time() + 3600)  # the enqueuer's clock runs an hour ahead
    make(redis_server, registry)
    assert value(registry, "harbor_task_queue_latency", type="GC") == 0
    assert value(registry, "harbor_task_queue_size", type="GC") == 1


def test_scheduled_total_compat_switch(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    schedule(r, NS, "GC", time.time() + 60)
    make(redis_server, registry, scheduled_total=True)
    text = scrape(registry)
    got = samples(text)
    assert got[("harbor_task_scheduled", ())] == 1
    assert got[("harbor_task_scheduled_total", ())] == 1
    # Why it is off by default: promtool flags Harbor's name, and only that.
    promtool = shutil.which("promtool")
    if promtool is not None:
        proc = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                              capture_output=True, timeout=60)
        complaints = (proc.stdout + proc.stderr).decode().strip().splitlines()
        assert complaints == [
            'harbor_task_scheduled_total non-counter metrics should not have "_total" suffix'
        ]


def test_key_prefix_queues_and_metric_namespace(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    enqueue(r, "work:", "a", time.time())  # a prefix already ending in ':' is kept as is
    enqueue(r, "work", "b", time.time())
    enqueue(r, "work", "c", time.time())
    enqueue(r, NS, "other", time.time())  # another namespace: never read
    make(redis_server, registry, key_prefix="work", namespace="acme", queues=["a", "b"])
    got = samples(scrape(registry))
    sizes = {k[1]: v for k, v in got.items() if k[0] == "acme_task_queue_size"}
    assert sizes == {(("type", "a"),): 1, (("type", "b"),): 1}
    assert got[("acme_task_exporter_up", ())] == 1
    assert not any(name.startswith("harbor_") for name, _ in got)


def test_empty_namespace(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    enqueue(redis_server.client(), NS, "GC", time.time())
    make(redis_server, registry, namespace="")
    assert value(registry, "task_queue_size", type="GC") == 1
    assert value(registry, "task_exporter_up") == 1


def test_undecodable_job_leaves_latency_out_but_keeps_the_rest(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    r.sadd(NS + ":known_jobs", "BROKEN")
    r.lpush(NS + ":jobs:BROKEN", b"not json")
    enqueue(r, NS, "GOOD", time.time() - 30)
    make(redis_server, registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_queue_size", (("type", "BROKEN"),))] == 1
    assert ("harbor_task_queue_latency", (("type", "BROKEN"),)) not in got
    assert 29 <= got[("harbor_task_queue_latency", (("type", "GOOD"),))] <= 60
    assert got[("harbor_task_exporter_up", ())] == 1


def test_nothing_is_read_before_a_scrape(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    r.config_resetstat()
    make(redis_server, registry)  # registering calls describe(), which must not read Redis
    assert "llen" not in command_counts(r)
    scrape(registry)
    assert command_counts(r)["llen"] == 1


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"layout": "sidekiq"}, ValueError, "layout='sidekiq' is not a known layout"),
        ({"namespace": "bad-name"}, ValueError, "namespace='bad-name'"),
        ({"timeout": 0}, ValueError, "timeout must be a finite number > 0"),
        ({"cache_seconds": -1}, ValueError, "cache_seconds must be a finite number >= 0"),
        ({"cache_seconds": "23"}, TypeError, "cache_seconds must be a number"),
        ({"queues": "default"}, TypeError, "queues must be a sequence of names"),
        ({"max_queues": 0}, ValueError, "max_queues must be an int >= 1"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    redis_server: RedisServer, kw: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        RedisExporter(redis_server.url(), registry=None, **kw)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://127.0.0.1:6379", "must start with redis://, rediss://, redis[+]sentinel://"),
        ("redis://127.0.0.1:notaport/0", "is not a valid URL"),
        ("redis://127.0.0.1:6379/zero", "the database 'zero' is not a number"),
        ("redis:///0", "names no host"),
    ],
)
def test_bad_url_is_a_clear_error(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisExporter(url, registry=None)


def test_url_or_client_exactly_one(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="exactly one of redis_url or client"):
        RedisExporter(registry=None)
    with pytest.raises(ValueError, match="exactly one of redis_url or client"):
        RedisExporter(redis_server.url(), client=redis_server.client(), registry=None)


def test_layout_instance(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    enqueue(redis_server.client(), "work", "a", time.time())
    layout = HarborLayout(key_prefix="work", queues=["a"])
    RedisExporter(redis_server.url(), layout=layout, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="a") == 1
    with pytest.raises(ValueError, match="belong to the Layout instance"):
        RedisExporter(redis_server.url(), layout=layout, queues=["b"], registry=None)


def test_own_client(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    enqueue(redis_server.client(), NS, "GC", time.time())
    RedisExporter(client=redis_server.client(), registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1


def test_key_of_unexpected_type_leaves_only_that_queue_out(
    redis_server: RedisServer, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_server.client()
    r.sadd(NS + ":known_jobs", "ODD")
    r.set(NS + ":jobs:ODD", "a string, not a list")  # WRONGTYPE for LLEN
    enqueue(r, NS, "GC", time.time())
    make(redis_server, registry)
    got = samples(scrape(registry))
    sizes = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}
    assert sizes == {(("type", "GC"),): 1}
    assert got[("harbor_task_exporter_up", ())] == 1
    assert "queue 'ODD'" in caplog.text and "WRONGTYPE" in caplog.text
