"""Bounded work per scrape: the commands sent do not grow with the jobs waiting."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Dict

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from rq import Queue

from exporter_support import RedisServer, command_counts, enqueue, gocraft_job
from jobmetrics.exporter import RedisExporter
from promcheck import promtool_check, scrape, value

NS = "{harbor_job_service_namespace}"
BIG = 200_000
# Commands that walk a whole list or the keyspace: never sent by a scrape.
UNBOUNDED = {"keys", "lrange", "smembers", "zrange", "zrangebyscore", "hkeys", "hvals"}


def fill_harbor(server: RedisServer, n: int) -> None:
    r = server.client()
    enqueue(r, NS, "GC", time.time() - 60)
    job = gocraft_job("GC", time.time())
    for start in range(1, n, 20_000):
        r.lpush(NS + ":jobs:GC", *([job] * min(20_000, n - start)))


def fill_rq(server: RedisServer, n: int) -> None:
    r = server.client()
    Queue("default", connection=r).enqueue("os.getcwd")  # a real job at the head
    for start in range(1, n, 20_000):
        ids = [str(uuid.uuid4()) for _ in range(min(20_000, n - start))]
        r.rpush("rq:queue:default", *ids)


def fill_celery(server: RedisServer, n: int) -> None:
    app = Celery("t", broker=server.url(), set_as_current=False)
    try:
        app.send_task("t.a", queue="default")
    finally:
        app.close()
    r = server.client()
    message = r.lindex("default", 0)
    for start in range(1, n, 20_000):
        r.lpush("default", *([message] * min(20_000, n - start)))


FILL: Dict[str, Callable[[RedisServer, int], None]] = {
    "harbor": fill_harbor, "rq": fill_rq, "celery": fill_celery,
}
LABEL = {"harbor": {"type": "GC"}, "rq": {"queue": "default"}, "celery": {"queue": "default"}}


def scrape_commands(server: RedisServer, registry: CollectorRegistry) -> Dict[str, int]:
    """The commands one scrape sends (the test's own INFO/CONFIG calls left out)."""
    r = server.client()
    r.config_resetstat()
    text = scrape(registry)
    promtool_check(text)
    return {k: v for k, v in command_counts(r).items() if k not in ("info", "config|resetstat")}


@pytest.mark.parametrize("layout", ["harbor", "rq", "celery"])
def test_200k_queue_costs_the_same_commands_as_a_1_item_queue(
    tmp_path_factory: pytest.TempPathFactory, layout: str
) -> None:
    from exporter_support import RedisServer

    counts = []
    for n in (1, BIG):
        server = RedisServer(tmp_path_factory.mktemp(f"redis-{n}"))
        server.start()
        try:
            FILL[layout](server, n)
            registry = CollectorRegistry()
            exporter = RedisExporter(server.url(), layout=layout, timeout=30, registry=registry)
            assert value(registry, "harbor_task_queue_size", **LABEL[layout]) == n
            assert value(registry, "harbor_task_exporter_up") == 1
            counts.append(scrape_commands(server, registry))
            exporter.close()
        finally:
            server.stop()
    small, big = counts
    assert small == big
    assert not UNBOUNDED & set(big), big
    assert sum(big.values()) <= 12, big
