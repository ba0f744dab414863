"""The `procrastinate` layout, with jobs deferred and run by Procrastinate's own app and worker."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics.exporter import PostgresExporter
from pg_support import PostgresServer
from promcheck import promtool_check, samples, scrape, value

procrastinate = pytest.importorskip("procrastinate")


def family(got: Dict[Any, float], name: str) -> Dict[Any, float]:
    return {k[1]: v for k, v in got.items() if k[0] == name}


def wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_deferred_run_by_a_real_worker(
    pg_server: PostgresServer, registry: CollectorRegistry
) -> None:
    db = pg_server.new_database("procrastinate_layout")
    url = pg_server.url(db)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    gate = threading.Event()

    @app.task(queue="emails", name="send")
    def send() -> None:
        pass

    @app.task(queue="emails", name="bounce")
    def bounce() -> None:
        raise ValueError("mailbox full")

    @app.task(queue="reports", name="flaky", retry=1)
    def flaky() -> None:
        raise RuntimeError("always")

    @app.task(queue="slow", name="hold")
    def hold() -> None:
        gate.wait(30)

    with app.open():
        app.schema_manager.apply_schema()
        PostgresExporter(url, layout="procrastinate", registry=registry)
        scrape(registry)  # the tail starts here: nothing finished yet
        send.defer()
        send.defer()
        bounce.defer()
        flaky.defer()
        send.configure(queue="reports", schedule_in={"hours": 1}).defer()
        text = scrape(registry)
        got = samples(text)
        assert family(got, "harbor_task_queue_size") == {
            (("queue", "emails"),): 3, (("queue", "reports"),): 1,
        }
        assert family(got, "harbor_task_scheduled") == {
            (("queue", "emails"),): 0, (("queue", "reports"),): 1,
        }
        assert 0 <= got[("harbor_task_queue_latency", (("queue", "emails"),))] < 30
        assert set(family(got, "harbor_task_finished_total").values()) == {0}
        promtool_check(text)

    # run_worker opens (and closes) the app itself.
    app.run_worker(queues=["emails", "reports"], wait=False, install_signal_handlers=False)
    got = samples(scrape(registry))
    finished = {k: v for k, v in family(got, "harbor_task_finished_total").items() if v}
    assert finished == {
        (("queue", "emails"), ("status", "success")): 2,
        (("queue", "emails"), ("status", "fail")): 1,
        # One failed attempt deferred for retry, then the last one failed.
        (("queue", "reports"), ("status", "fail")): 2,
    }
    assert got[("harbor_task_queue_size", (("queue", "emails"),))] == 0
    assert got[("harbor_task_queue_latency", (("queue", "emails"),))] == 0
    assert got[("harbor_task_scheduled", (("queue", "reports"),))] == 1

    # A job in a worker's hands is running, not waiting.
    with app.open():
        hold.defer()
    worker = threading.Thread(target=lambda: app.run_worker(
        queues=["slow"], wait=False, install_signal_handlers=False))
    worker.start()
    try:
        wait_for(lambda: value(registry, "harbor_task_concurrency", queue="slow") == 1)
        assert value(registry, "harbor_task_queue_size", queue="slow") == 0
    finally:
        gate.set()
        worker.join(30)
    assert value(registry, "harbor_task_finished_total", queue="slow", status="success") == 1
    assert value(registry, "harbor_task_concurrency", queue="slow") == 0

    # A job cancelled before a worker took it ends as stop.
    with app.open():
        job_id = send.configure(queue="slow").defer()
        assert app.job_manager.cancel_job_by_id(job_id)
    assert value(registry, "harbor_task_finished_total", queue="slow", status="stop") == 1
    assert value(registry, "harbor_task_queue_size", queue="slow") == 0


def test_oldest_ready_job_latency(pg_server: PostgresServer, registry: CollectorRegistry) -> None:
    db = pg_server.new_database("procrastinate_latency")
    url = pg_server.url(db)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(queue="q", name="t")
    def t() -> None:
        pass

    with app.open():
        app.schema_manager.apply_schema()
        t.defer()
        t.defer()
        t.configure(schedule_in={"seconds": -1}).defer()  # due already
    with pg_server.connect(db) as conn:
        # Age the deferral as if it happened 120 s ago (what the events trigger stamped).
        conn.execute("UPDATE procrastinate_events SET at = at - interval '120 seconds'"
                     " WHERE job_id = (SELECT min(id) FROM procrastinate_jobs)")
    PostgresExporter(url, layout="procrastinate", registry=registry)
    start = time.time()
    got = samples(scrape(registry))
    assert got[("harbor_task_queue_size", (("queue", "q"),))] == 3
    assert 120 <= got[("harbor_task_queue_latency", (("queue", "q"),))] <= 121 + time.time() - start
