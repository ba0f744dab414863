"""The PostgreSQL store with the `harbor` layout: Harbor's own `task` table, as core writes it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Dict

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from harbor_tables import DDL, INDEXES, create_task, execution, past, run_task, update_status
from jobmetrics.exporter import HarborTablesLayout, PostgresExporter
from jobmetrics.exporter.postgres import postgres_connect
from pg_support import PASSWORD, PostgresServer
from promcheck import promtool_check, samples, scrape, value


@pytest.fixture(scope="module")
def harbor_db(pg_server: PostgresServer) -> str:
    db = pg_server.new_database("harbor_layout")
    with pg_server.connect(db) as conn:
        conn.execute(DDL)
        conn.execute(INDEXES)
    return db


@pytest.fixture
def conn(pg_server: PostgresServer, harbor_db: str) -> Iterator[Any]:
    """A connection to an empty task table (history and all)."""
    with pg_server.connect(harbor_db) as c:
        c.execute("TRUNCATE task, execution RESTART IDENTITY")
        yield c


def family(got: Dict[Any, float], name: str) -> Dict[Any, float]:
    return {k[1]: v for k, v in got.items() if k[0] == name}


def exporter(pg_server: PostgresServer, db: str, registry: CollectorRegistry,
             **kw: Any) -> PostgresExporter:
    return PostgresExporter(pg_server.url(db), registry=registry, **kw)


def test_sizes_latency_running_scheduled_finished(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    rep = execution(conn, "REPLICATION")
    gc = execution(conn, "GARBAGE_COLLECTION")
    scan = execution(conn, "SCAN_ALL")
    for _ in range(3):  # history from before the exporter started: never counted
        run_task(conn, rep, "REPLICATION", "Success", created=past(3600))
    for age in (100, 50, 10):
        run_task(conn, rep, "REPLICATION", None, created=past(age))  # submitted, running
    waiting = [create_task(conn, rep, "REPLICATION", created=past(age)) for age in (90, 40)]
    create_task(conn, gc, "GARBAGE_COLLECTION", created=past(5))
    scheduled = create_task(conn, scan, "SCAN_ALL", created=past(1))
    update_status(conn, scheduled, "Scheduled", int(time.time()))

    # The session's time zone must not shift Harbor's zone-less times.
    url = pg_server.url(harbor_db) + "?options=-ctimezone%3DAsia/Tokyo"
    PostgresExporter(url, registry=registry)
    start = time.time()
    text = scrape(registry)
    got = samples(text)
    assert family(got, "harbor_task_queue_size") == {
        (("type", "REPLICATION"),): 2, (("type", "GARBAGE_COLLECTION"),): 1,
        (("type", "SCAN_ALL"),): 0,
    }
    latency = got[("harbor_task_queue_latency", (("type", "REPLICATION"),))]
    assert 90 <= latency <= 91 + (time.time() - start)
    assert got[("harbor_task_queue_latency", (("type", "SCAN_ALL"),))] == 0
    assert family(got, "harbor_task_concurrency") == {
        (("type", "REPLICATION"),): 3, (("type", "GARBAGE_COLLECTION"),): 0,
        (("type", "SCAN_ALL"),): 0,
    }
    assert got[("harbor_task_scheduled", (("type", "SCAN_ALL"),))] == 1
    assert got[("harbor_task_exporter_up", ())] == 1
    # The tail starts now: every known type at 0 for each status, history not counted.
    finished = family(got, "harbor_task_finished_total")
    assert set(finished.values()) == {0.0}
    assert len(finished) == 9
    promtool_check(text)

    # Core runs the two waiting tasks and jobservice reports their ends.
    rev = int(time.time())
    update_status(conn, waiting[0], "Running", rev)
    update_status(conn, waiting[0], "Success", rev)
    update_status(conn, waiting[1], "Running", rev)
    update_status(conn, waiting[1], "Error", rev)
    run_task(conn, gc, "GARBAGE_COLLECTION", "Stopped")
    run_task(conn, gc, "GARBAGE_COLLECTION", "Success")
    got = samples(scrape(registry))
    finished = {k: v for k, v in family(got, "harbor_task_finished_total").items() if v}
    assert finished == {
        (("status", "success"), ("type", "REPLICATION")): 1,
        (("status", "fail"), ("type", "REPLICATION")): 1,
        (("status", "stop"), ("type", "GARBAGE_COLLECTION")): 1,
        (("status", "success"), ("type", "GARBAGE_COLLECTION")): 1,
    }
    assert got[("harbor_task_queue_size", (("type", "REPLICATION"),))] == 0
    assert got[("harbor_task_queue_latency", (("type", "REPLICATION"),))] == 0

    # A scrape with nothing new counts nothing again; a retried task that ends again counts.
    again = samples(scrape(registry))
    assert family(again, "harbor_task_finished_total") == family(got, "harbor_task_finished_total")
    update_status(conn, waiting[1], "Running", rev + 5)  # the retry: new revision
    update_status(conn, waiting[1], "Success", rev + 5)
    assert value(registry, "harbor_task_finished_total", type="REPLICATION",
                 status="success") == 2
    assert value(registry, "harbor_task_finished_total", type="REPLICATION", status="fail") == 1


def test_a_row_committed_late_is_counted_once(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    gc = execution(conn, "GC")
    exporter(pg_server, harbor_db, registry)
    scrape(registry)  # the tail starts
    with pg_server.connect(harbor_db) as slow:
        slow.execute("BEGIN")
        # Its end_time is taken now, its commit comes after a later task's and a scrape.
        run_task(slow, gc, "GC", "Error")
        time.sleep(0.01)
        run_task(conn, gc, "GC", "Success")
        assert value(registry, "harbor_task_finished_total", type="GC", status="success") == 1
        assert value(registry, "harbor_task_finished_total", type="GC", status="fail") == 0
        slow.execute("COMMIT")
    assert value(registry, "harbor_task_finished_total", type="GC", status="fail") == 1
    assert value(registry, "harbor_task_finished_total", type="GC", status="fail") == 1
    assert value(registry, "harbor_task_finished_total", type="GC", status="success") == 1


def test_backlog_is_read_in_bounded_batches(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    class Small(HarborTablesLayout):
        max_rows = 5

    gc = execution(conn, "GC")
    exporter(pg_server, harbor_db, registry, layout=Small())
    scrape(registry)
    for _ in range(12):
        run_task(conn, gc, "GC", "Success")
    counts = [value(registry, "harbor_task_finished_total", type="GC", status="success")
              for _ in range(6)]
    # Each batch starts at the last key read (that row again, skipped): 5, 4, 3 new.
    assert counts == [5, 9, 12, 12, 12, 12]


def test_queues_and_namespace(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    for t in ("a", "b", "c"):
        run_task(conn, execution(conn, t), t, None)
    exporter(pg_server, harbor_db, registry, queues=["a", "b", "z"], namespace="acme")
    got = samples(scrape(registry))
    assert family(got, "acme_task_concurrency") == {
        (("type", "a"),): 1, (("type", "b"),): 1, (("type", "z"),): 0,
    }
    assert not any(name.startswith("harbor_") for name, _ in got)


def test_works_without_the_recommended_indexes(
    pg_server: PostgresServer, registry: CollectorRegistry
) -> None:
    db = pg_server.new_database("harbor_no_index")
    with pg_server.connect(db) as c:
        c.execute(DDL)
        gc = execution(c, "GC")
        run_task(c, gc, "GC", None, created=past(30))
        exporter(pg_server, db, registry)
        scrape(registry)
        run_task(c, gc, "GC", "Error")
    got = samples(scrape(registry))
    assert got[("harbor_task_concurrency", (("type", "GC"),))] == 1
    assert got[("harbor_task_finished_total", (("status", "fail"), ("type", "GC")))] == 1


def test_locked_table_does_not_hang_the_scrape(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    run_task(conn, execution(conn, "GC"), "GC", None)
    exporter(pg_server, harbor_db, registry, timeout=0.5)
    assert value(registry, "harbor_task_concurrency", type="GC") == 1
    with pg_server.connect(harbor_db) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE task IN ACCESS EXCLUSIVE MODE")
        results = []
        scrapers = [threading.Thread(target=lambda: results.append(samples(scrape(registry))))
                    for _ in range(4)]
        for t in scrapers:
            t.start()
        for t in scrapers:
            t.join(30)
        assert len(results) == 4
        for got in results:
            assert got[("harbor_task_exporter_up", ())] == 0
            assert not any(name == "harbor_task_concurrency" for name, _ in got)
            assert got[("harbor_task_exporter_read_duration_seconds", ())] >= 0.45
        locker.execute("ROLLBACK")
    # The read in flight ends within moments, either cancelled by the server
    # (statement_timeout, which races the scrapers' own 0.5 s) or granted the lock; a
    # scrape joining it before then would share its fate. Let it end, then: the next
    # scrape reads again.
    time.sleep(0.3)
    assert value(registry, "harbor_task_concurrency", type="GC") == 1
    assert value(registry, "harbor_task_exporter_up") == 1


def test_stopped_then_restarted(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gc = execution(conn, "GC")
    run_task(conn, gc, "GC", None)
    exporter(pg_server, harbor_db, registry, timeout=2)
    assert value(registry, "harbor_task_concurrency", type="GC") == 1
    run_task(conn, gc, "GC", "Success")
    assert value(registry, "harbor_task_finished_total", type="GC", status="success") == 1
    conn.close()
    caplog.set_level(logging.INFO, "jobmetrics.exporter")

    pg_server.stop()
    try:
        text = scrape(registry)
        got = samples(text)
        assert got[("harbor_task_exporter_up", ())] == 0
        assert got[("harbor_task_exporter_read_errors_total", ())] == 1
        assert got[("harbor_task_exporter_read_duration_seconds", ())] <= 2.5  # the timeout
        assert not any(name.startswith("harbor_task_") and "exporter" not in name
                       for name, _ in got)
        promtool_check(text)
        assert value(registry, "harbor_task_exporter_up") == 0  # unreachable: still answers
    finally:
        pg_server.start()
    with pg_server.connect(harbor_db) as c:
        run_task(c, gc, "GC", "Success")
    assert value(registry, "harbor_task_exporter_up") == 1
    # The counter carried on from where it was: no reset, nothing counted twice.
    assert value(registry, "harbor_task_finished_total", type="GC", status="success") == 2
    assert "reading PostgreSQL failed" in caplog.text
    assert "reading PostgreSQL again" in caplog.text
    assert PASSWORD not in caplog.text


def test_unreachable_from_the_start(registry: CollectorRegistry) -> None:
    from servers import free_port

    PostgresExporter(f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db", timeout=1,
                     registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0
    assert got[("harbor_task_exporter_read_errors_total", ())] == 1
    assert ("harbor_task_exporter_last_success_timestamp_seconds", ()) not in got


def test_wrong_password_is_a_failed_read_that_never_shows_the_password(
    pg_server: PostgresServer, harbor_db: str, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-" + PASSWORD
    url = pg_server.url(harbor_db).replace(PASSWORD, wrong)
    e = PostgresExporter(url, timeout=2, registry=registry)
    text = scrape(registry)
    assert samples(text)[("harbor_task_exporter_up", ())] == 0
    assert "password authentication failed" in caplog.text
    assert wrong not in caplog.text and wrong not in text and wrong not in repr(e)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"layout": "sidekiq"}, ValueError, "layout='sidekiq' is not a PostgreSQL layout"),
        ({"layout": "celery"}, ValueError, "layout='celery' is not a PostgreSQL layout"),
        ({"layout": 3}, TypeError, "layout must be a name or a SqlLayout"),
        ({"namespace": "bad-name"}, ValueError, "namespace='bad-name'"),
        ({"timeout": 0}, ValueError, "timeout must be a finite number > 0"),
        ({"cache_seconds": -1}, ValueError, "cache_seconds must be a finite number >= 0"),
        ({"queues": "default"}, TypeError, "queues must be a sequence of names"),
        ({"max_queues": 0}, ValueError, "max_queues must be an int >= 1"),
    ],
)
def test_bad_configuration_is_a_clear_error(kw: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PostgresExporter("postgresql://127.0.0.1/db", registry=None, **kw)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://127.0.0.1:6379/0", "must start with postgresql:// or postgres://"),
        (f"mysql://u:{PASSWORD}@h/db", "must start with postgresql://"),
        (f"postgresql://u:{PASSWORD}@h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        (f"postgresql://u:{PASSWORD}@h:port/db", "port 'port' is not a port number"),
    ],
)
def test_bad_url_is_a_clear_error_without_the_password(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        PostgresExporter(url, registry=None)
    assert PASSWORD not in str(info.value)


def test_harbor_layout_refuses_a_key_prefix() -> None:
    with pytest.raises(ValueError, match="key_prefix is for the Redis layouts"):
        HarborTablesLayout(key_prefix="{harbor_job_service_namespace}")


def test_nothing_is_read_before_a_scrape(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    def sessions() -> int:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            ("jobmetrics-exporter",)).fetchone()
        return int(row[0])

    before = sessions()
    e = exporter(pg_server, harbor_db, registry)
    assert sessions() == before  # registering calls describe(), which must not connect
    scrape(registry)
    assert sessions() == before + 1
    e.close()
    deadline = time.monotonic() + 10  # the backend exits just after the socket closes
    while sessions() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sessions() == before


def test_missing_database_then_created_recovers(
    pg_server: PostgresServer, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with pg_server.connect() as c:
        c.execute('DROP DATABASE IF EXISTS "harbor_later"')
    PostgresExporter(pg_server.url("harbor_later"), timeout=2, registry=registry)
    assert value(registry, "harbor_task_exporter_up") == 0
    assert 'database "harbor_later" does not exist' in caplog.text
    db = pg_server.new_database("harbor_later")
    with pg_server.connect(db) as c:
        c.execute(DDL)
        run_task(c, execution(c, "GC"), "GC", None)
    assert value(registry, "harbor_task_concurrency", type="GC") == 1
    assert value(registry, "harbor_task_exporter_up") == 1


def test_layout_of_other_tables_is_a_failed_read_naming_them(
    pg_server: PostgresServer, harbor_db: str, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter(pg_server, harbor_db, registry, layout="pgqueuer")
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0
    assert got[("harbor_task_exporter_read_errors_total", ())] == 1
    assert 'relation "pgqueuer" does not exist' in caplog.text


def test_session_is_read_only_with_the_statement_timeout(
    pg_server: PostgresServer, harbor_db: str
) -> None:
    with postgres_connect(pg_server.url(harbor_db), timeout=1.5) as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert c.execute("SELECT current_setting('application_name')").fetchone() == (
            "jobmetrics-exporter",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("DELETE FROM task")
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(5)")


def test_cache_serves_one_reading_and_the_tail_waits_for_the_next_read(
    pg_server: PostgresServer, harbor_db: str, conn: Any, registry: CollectorRegistry
) -> None:
    gc = execution(conn, "GC")
    exporter(pg_server, harbor_db, registry, cache_seconds=3600)
    scrape(registry)
    run_task(conn, gc, "GC", "Success")
    # Within cache_seconds nothing is read: the counter shows what the cached read saw.
    assert value(registry, "harbor_task_finished_total", type="GC", status="success") is None
    assert value(registry, "harbor_task_exporter_up") == 1
