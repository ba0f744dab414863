"""The `celery` layout, on messages Celery publishes to its Redis broker (no worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.signals import before_task_publish
from prometheus_client import CollectorRegistry

from exporter_support import RedisServer, command_counts
from jobmetrics.exporter import (
    CELERY_ENQUEUED_HEADER,
    CeleryLayout,
    RedisExporter,
    stamp_enqueue_time,
)
from promcheck import promtool_check, samples, scrape, value


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Celery]:
    app = Celery("t", broker=redis_server.url(1), set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def stamped() -> Iterator[None]:
    before_task_publish.connect(stamp_enqueue_time, weak=False)
    yield
    before_task_publish.disconnect(stamp_enqueue_time)


def sizes(registry: CollectorRegistry) -> dict:
    got = samples(scrape(registry))
    return {dict(k[1])["queue"]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}


def test_sizes_over_named_queues_and_priorities(
    app: Celery, redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    app.send_task("t.a", queue="emails")
    app.send_task("t.a", queue="emails", priority=5)  # kombu's priority list emails\x06\x163
    app.send_task("t.a", queue="emails", priority=9)
    app.send_task("t.b", queue="reports")
    app.send_task("t.c")  # Celery's default queue
    app.send_task("t.c", countdown=600)  # eta: still in the queue until a worker takes it
    RedisExporter(redis_server.url(1), layout="celery", registry=registry)
    assert sizes(registry) == {"emails": 3, "reports": 1, "celery": 2}
    text = scrape(registry)
    # Celery's messages carry no enqueue time: without stamps there is no latency sample.
    assert "harbor_task_queue_latency{" not in text
    assert "harbor_task_concurrency" not in text and "harbor_task_scheduled" not in text
    promtool_check(text)


def test_latency_from_stamped_messages(
    app: Celery, redis_server: RedisServer, registry: CollectorRegistry, stamped: None
) -> None:
    app.send_task("t.a", queue="emails")
    app.send_task("t.a", queue="emails", priority=5)
    raw = redis_server.client(1).lindex("emails", -1)
    assert CELERY_ENQUEUED_HEADER.encode() in raw
    RedisExporter(redis_server.url(1), layout="celery", registry=registry)
    start = time.time()
    time.sleep(0.2)
    latency = value(registry, "harbor_task_queue_latency", queue="emails")
    assert latency is not None and 0.2 <= latency <= 0.3 + (time.time() - start)


def test_future_stamp_gives_zero_latency(
    app: Celery, redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    app.send_task("t.a", queue="q", headers={CELERY_ENQUEUED_HEADER: time.time() + 3600})
    RedisExporter(redis_server.url(1), layout="celery", registry=registry)
    assert value(registry, "harbor_task_queue_latency", queue="q") == 0


def test_explicit_queues_and_empty_queue(
    app: Celery, redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    app.send_task("t.a", queue="emails")
    RedisExporter(
        redis_server.url(1), layout="celery", queues=["emails", "idle"], registry=registry
    )
    assert sizes(registry) == {"emails": 1, "idle": 0}
    assert value(registry, "harbor_task_queue_latency", queue="idle") == 0


def test_global_key_prefix(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    app = Celery("t", broker=redis_server.url(1), set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": "acme:"}
    try:
        app.send_task("t.a", queue="emails")
        app.send_task("t.a", queue="emails")
    finally:
        app.close()
    RedisExporter(redis_server.url(1), layout="celery", key_prefix="acme:", registry=registry)
    assert sizes(registry) == {"emails": 2}


def test_discovery_over_a_large_keyspace_is_spread_over_scrapes(
    app: Celery, redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client(1)
    r.mset({f"celery-task-meta-{i}": "{}" for i in range(2000)})  # results, not queues
    app.send_task("t.a", queue="emails")
    app.send_task("t.a", queue="reports")
    layout = CeleryLayout()
    layout.max_scan_calls, layout.scan_count = 2, 50  # a small walk per scrape
    RedisExporter(redis_server.url(1), layout=layout, registry=registry)
    found: dict = {}
    for _ in range(100):  # 2,000 keys / 100 per scrape: one walk takes about 20 scrapes
        r.config_resetstat()
        found = sizes(registry)
        assert command_counts(r)["scan"] <= 2  # bounded work in every scrape
        if found == {"emails": 1, "reports": 1}:
            break
    assert found == {"emails": 1, "reports": 1}
    for _ in range(30):  # later walks keep them: no series flaps in and out
        assert sizes(registry) == {"emails": 1, "reports": 1}
