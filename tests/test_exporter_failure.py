"""Redis down, stalled or back: scrapes keep answering, health says so, values recover."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from exporter_support import RedisServer, command_counts, enqueue
from jobmetrics.exporter import RedisExporter
from promcheck import promtool_check, samples, scrape, value

NS = "{harbor_job_service_namespace}"


def task_samples(registry: CollectorRegistry) -> dict:
    got = samples(scrape(registry))
    return {k: v for k, v in got.items() if not k[0].startswith("harbor_task_exporter_")}


def test_stopped_then_restarted(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    enqueue(redis_server.client(), NS, "GC", time.time())
    RedisExporter(redis_server.url(), timeout=2, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1
    assert value(registry, "harbor_task_exporter_up") == 1
    first_success = value(registry, "harbor_task_exporter_last_success_timestamp_seconds")

    redis_server.stop()
    text = scrape(registry)
    got = samples(text)
    assert got[("harbor_task_exporter_up", ())] == 0
    assert got[("harbor_task_exporter_read_errors_total", ())] == 1
    # What was read before the outage is not served as if it were current.
    assert task_samples(registry) == {}
    assert value(registry, "harbor_task_exporter_read_errors_total") == 3  # one per scrape
    assert first_success is not None
    last = value(registry, "harbor_task_exporter_last_success_timestamp_seconds")
    assert last is not None and last >= first_success
    promtool_check(text)

    redis_server.start()  # same port, empty (no persistence)
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    enqueue(r, NS, "GC", time.time())
    assert value(registry, "harbor_task_queue_size", type="GC") == 2
    assert value(registry, "harbor_task_exporter_up") == 1
    assert value(registry, "harbor_task_exporter_read_errors_total") == 4  # no new failure


def test_stalled_redis_does_not_hang_the_scrape(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    RedisExporter(redis_server.url(), timeout=0.3, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1

    r.config_resetstat()
    stall = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG SLEEP 4"))
    stall.start()
    time.sleep(0.2)  # let DEBUG SLEEP reach the server
    results = []
    scrapers = [threading.Thread(target=lambda: results.append(samples(scrape(registry))))
                for _ in range(4)]
    for t in scrapers:
        t.start()
    for t in scrapers:
        t.join(30)
    # Every scrape answered while Redis was still asleep, with a failed health sample and
    # no task values.
    assert stall.is_alive()
    assert len(results) == 4
    for got in results:
        assert got[("harbor_task_exporter_up", ())] == 0
        assert not any(name == "harbor_task_queue_size" for name, _ in got)
        # It reports the time it waited for Redis, the timeout.
        assert got[("harbor_task_exporter_read_duration_seconds", ())] >= 0.25
    stall.join(30)
    # The four concurrent scrapes shared one read: Redis got one discovery call, not four.
    assert command_counts(r).get("sscan", 0) <= 1

    assert value(registry, "harbor_task_queue_size", type="GC") == 1  # recovered by itself
    assert value(registry, "harbor_task_exporter_up") == 1


def test_unreachable_from_the_start(registry: CollectorRegistry) -> None:
    from servers import free_port

    RedisExporter(f"redis://127.0.0.1:{free_port()}/0", timeout=1, registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0
    assert got[("harbor_task_exporter_read_errors_total", ())] == 1
    assert ("harbor_task_exporter_last_success_timestamp_seconds", ()) not in got
    assert task_samples(registry) == {}


def test_cache_serves_one_reading_for_cache_seconds(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    RedisExporter(redis_server.url(), cache_seconds=3600, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1
    enqueue(r, NS, "GC", time.time())
    r.config_resetstat()
    assert value(registry, "harbor_task_queue_size", type="GC") == 1  # from the cache
    assert "llen" not in {k[len("cmdstat_"):] for k in r.info("commandstats")}


def test_cache_expires(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    RedisExporter(redis_server.url(), cache_seconds=0.2, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1
    enqueue(r, NS, "GC", time.time())
    time.sleep(0.3)
    assert value(registry, "harbor_task_queue_size", type="GC") == 2


def test_expired_cache_is_not_served_when_redis_is_down(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    enqueue(redis_server.client(), NS, "GC", time.time())
    RedisExporter(redis_server.url(), cache_seconds=0.2, timeout=1, registry=registry)
    assert value(registry, "harbor_task_queue_size", type="GC") == 1
    redis_server.stop()
    time.sleep(0.3)
    assert task_samples(registry) == {}
    assert value(registry, "harbor_task_exporter_up") == 0
