"""The `pgqueuer` layout, with jobs enqueued and run by pgqueuer's own queries and QueueManager."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics.exporter import PostgresExporter
from pg_support import PASSWORD, USER, PostgresServer
from promcheck import promtool_check, samples, scrape, value

pgqueuer = pytest.importorskip("pgqueuer")


def family(got: Dict[Any, float], name: str) -> Dict[Any, float]:
    return {k[1]: v for k, v in got.items() if k[0] == name}


def install(pg_server: PostgresServer, db: str) -> None:
    """``pgq install``, pgqueuer's own schema installer."""
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pg_server.port), PGUSER=USER,
               PGPASSWORD=PASSWORD, PGDATABASE=db)
    subprocess.run([str(Path(sys.executable).with_name("pgq")), "install"], env=env,
                   check=True, capture_output=True, timeout=120)


def test_enqueued_and_run_by_a_real_queue_manager(
    pg_server: PostgresServer, registry: CollectorRegistry
) -> None:
    import psycopg
    from pgqueuer.domain.types import QueueExecutionMode

    # Drain mode: run until the queue is empty, then return.
    drain: Dict[str, Any] = {
        "mode": QueueExecutionMode.drain, "dequeue_timeout": timedelta(seconds=0.1),
        "heartbeat_timeout": timedelta(seconds=0.8), "log_aggregation_interval": timedelta(0),
    }
    db = pg_server.new_database("pgqueuer_layout")
    install(pg_server, db)
    url = pg_server.url(db)
    PostgresExporter(url, layout="pgqueuer", registry=registry)
    scrape(registry)  # the tail starts here

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        driver = pgqueuer.PsycopgDriver(conn)
        queries = pgqueuer.Queries(driver)
        qm = pgqueuer.QueueManager(queries)
        release = asyncio.Event()

        @qm.entrypoint("ok")
        async def ok(job: Any) -> None:
            pass

        @qm.entrypoint("boom")
        async def boom(job: Any) -> None:
            raise ValueError("boom")

        @qm.entrypoint("hold")
        async def hold(job: Any) -> None:
            await release.wait()

        await queries.enqueue(["ok", "ok", "boom", "hold"], [b"1", b"2", b"3", b"4"],
                              [0, 0, 0, 0])
        await queries.enqueue("later", b"5", execute_after=timedelta(hours=1))
        text = scrape(registry)
        got = samples(text)
        assert family(got, "harbor_task_queue_size") == {
            (("queue", "ok"),): 2, (("queue", "boom"),): 1, (("queue", "hold"),): 1,
            (("queue", "later"),): 0,
        }
        assert got[("harbor_task_scheduled", (("queue", "later"),))] == 1
        assert 0 <= got[("harbor_task_queue_latency", (("queue", "ok"),))] < 30
        promtool_check(text)

        # One run of the queue manager (drain mode: it returns once the queue is empty).
        run = asyncio.create_task(qm.run(**drain))

        def finished() -> Dict[Any, float]:
            got = samples(scrape(registry))
            return {k: v for k, v in family(got, "harbor_task_finished_total").items() if v}

        want = {(("queue", "ok"), ("status", "success")): 2,
                (("queue", "boom"), ("status", "fail")): 1}
        for _ in range(600):
            if finished() == want and \
                    value(registry, "harbor_task_concurrency", queue="hold") == 1:
                break
            await asyncio.sleep(0.05)
        # The picked job is running, not waiting; the others have ended.
        assert finished() == want
        assert value(registry, "harbor_task_concurrency", queue="hold") == 1
        assert value(registry, "harbor_task_queue_size", queue="hold") == 0
        assert value(registry, "harbor_task_queue_size", queue="ok") == 0
        release.set()
        for _ in range(600):
            if value(registry, "harbor_task_finished_total", queue="hold",
                     status="success") == 1:
                break
            await asyncio.sleep(0.05)
        assert value(registry, "harbor_task_finished_total", queue="hold",
                     status="success") == 1
        assert value(registry, "harbor_task_concurrency", queue="hold") == 0
        # Every job has ended and been logged; stop the queue manager without waiting
        # out its listener's poll interval.
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await conn.close()

    asyncio.run(main())
