"""Scrape time of the PostgreSQL exporter per layout, against the history kept in the tables.

Starts its own PostgreSQL 15 (Debian's binaries, a temporary directory, a free loopback
port; the same helper as the tests), makes each layout's tables with the job system's own
installer (Harbor: the DDL of its migrations, as in tests/harbor_tables.py; Procrastinate:
its schema manager; pgqueuer: ``pgq install``; django-q2: ``migrate``), fills them
server-side with ``generate_series`` (10,000 jobs waiting, then 10,000 and 1,000,000
finished ones in the history) and times a full scrape (``generate_latest`` of a registry
holding only the exporter, the tail already started), best of 15. For Harbor and
django-q2 it also times the scrape without the index docs/exporter.md recommends.

    .venv/bin/python bench/bench_exporter_postgres.py
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harbor_tables import DDL, INDEXES, execution  # noqa: E402
from jobmetrics.exporter import PostgresExporter  # noqa: E402
from pg_support import PASSWORD, USER, PostgresServer  # noqa: E402

WAITING = 10_000
SIZES = (10_000, 1_000_000)


def best(fn: Callable[[], Any], repeat: int = 15) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def series(first: int, last: int) -> Dict[str, int]:
    return {"first": first, "last": last}


# -- Harbor -------------------------------------------------------------------------------

def harbor_schema(conn: Any, url: str) -> None:
    conn.execute(DDL)
    execution(conn, "GC")


def harbor_waiting(conn: Any) -> None:
    conn.execute(
        "INSERT INTO task (vendor_type, execution_id, job_id, status, status_code,"
        " status_revision, run_count, extra_attrs, creation_time, update_time)"
        " SELECT 'TYPE_' || (g %% 5), 1, 'w' || g, 'Pending', 0, 0, 0, '{}',"
        " (now() AT TIME ZONE 'UTC') - interval '1 minute', now()"
        " FROM generate_series(1, %(n)s::int) AS g", {"n": WAITING})


def harbor_history(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "INSERT INTO task (vendor_type, execution_id, job_id, status, status_code,"
        " status_revision, run_count, extra_attrs, creation_time, start_time, update_time,"
        " end_time)"
        " SELECT 'TYPE_' || (g %% 5), 1, 'h' || g, (ARRAY['Success','Error','Stopped'])"
        "[1 + g %% 3], 3, 1, 1, '{}', t, t, t, t"
        " FROM generate_series(%(first)s::int, %(last)s::int) AS g,"
        " LATERAL (SELECT timestamp '2020-01-01' + g * interval '10 ms' AS t) AS x",
        series(first, last))


# -- Procrastinate ------------------------------------------------------------------------

def procrastinate_schema(conn: Any, url: str) -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    with app.open():
        app.schema_manager.apply_schema()


def procrastinate_waiting(conn: Any) -> None:
    # Inserted todo: Procrastinate's own triggers write each job's 'deferred' event.
    conn.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, status)"
        " SELECT 'q' || (g %% 5), 'task', 'todo' FROM generate_series(1, %(n)s::int) AS g",
        {"n": WAITING})


def procrastinate_history(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "WITH j AS (INSERT INTO procrastinate_jobs (queue_name, task_name, status, attempts)"
        " SELECT 'q' || (g %% 5), 'task', (ARRAY['succeeded','failed'])[1 + g %% 2]"
        "::procrastinate_job_status, 1"
        " FROM generate_series(%(first)s::int, %(last)s::int) AS g RETURNING id, status)"
        " INSERT INTO procrastinate_events (job_id, type, at)"
        " SELECT id, status::text::procrastinate_job_event_type, now() - interval '1 day'"
        " FROM j", series(first, last))


# -- pgqueuer -----------------------------------------------------------------------------

def pgqueuer_schema(conn: Any, url: str) -> None:
    info = conn.info
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(info.port), PGUSER=USER,
               PGPASSWORD=PASSWORD, PGDATABASE=info.dbname)
    subprocess.run([str(Path(sys.executable).with_name("pgq")), "install"], env=env,
                   check=True, capture_output=True)


def pgqueuer_waiting(conn: Any) -> None:
    conn.execute(
        "INSERT INTO pgqueuer (priority, entrypoint, payload, status, execute_after)"
        " SELECT 0, 'ep' || (g %% 5), NULL, 'queued', now() - interval '1 minute'"
        " FROM generate_series(1, %(n)s::int) AS g", {"n": WAITING})


def pgqueuer_history(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated)"
        " SELECT now() - interval '1 day', g, (ARRAY['successful','exception'])[1 + g %% 2]"
        "::pgqueuer_status, 0, 'ep' || (g %% 5), true"
        " FROM generate_series(%(first)s::int, %(last)s::int) AS g", series(first, last))


# -- django-q2 ----------------------------------------------------------------------------

def django_q_schema(conn: Any, url: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "tests" / "django_q_app.py"), url, "migrate"],
                   check=True, capture_output=True)


def django_q_waiting(conn: Any) -> None:
    conn.execute(
        "INSERT INTO django_q_ormq (key, payload, lock)"
        " SELECT 'jobs', 'x', now() - interval '1 minute'"
        " FROM generate_series(1, %(n)s::int) AS g", {"n": WAITING})


def django_q_history(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "INSERT INTO django_q_task (id, name, func, started, stopped, success,"
        " attempt_count, cluster)"
        " SELECT md5(g::text), 'n' || g, 'math.floor', t, t, g %% 2 = 0, 1, 'jobs'"
        " FROM generate_series(%(first)s::int, %(last)s::int) AS g,"
        " LATERAL (SELECT timestamptz '2020-01-01' + g * interval '10 ms' AS t) AS x",
        series(first, last))


Fill = Callable[[Any], None]
History = Callable[[Any, int, int], None]
Schema = Callable[[Any, str], None]
LAYOUTS: List[Tuple[str, Schema, Fill, History, Optional[Tuple[str, str]]]] = [
    ("harbor", harbor_schema, harbor_waiting, harbor_history,
     (INDEXES, "DROP INDEX task_active_idx, task_end_time_idx")),
    ("procrastinate", procrastinate_schema, procrastinate_waiting, procrastinate_history, None),
    ("pgqueuer", pgqueuer_schema, pgqueuer_waiting, pgqueuer_history, None),
    ("django-q2", django_q_schema, django_q_waiting, django_q_history,
     ("CREATE INDEX django_q_task_stopped_idx ON django_q_task (stopped)",
      "DROP INDEX django_q_task_stopped_idx")),
]


def scrape_ms(server: PostgresServer, db: str, layout: str) -> float:
    registry = CollectorRegistry()
    exporter = PostgresExporter(server.url(db), layout=layout, timeout=60, registry=registry)
    try:
        generate_latest(registry)  # connect and start the tail
        text = generate_latest(registry).decode()
        assert "harbor_task_exporter_up 1.0" in text, text
        return best(lambda: generate_latest(registry)) * 1e3
    finally:
        exporter.close()


def main() -> None:
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # its "app in __main__" note
    server = PostgresServer()
    server.start()
    try:
        print(f"PostgreSQL {server.connect().info.server_version}, "
              f"{WAITING:,} jobs waiting; scrape in ms, best of 15")
        print("| layout | index | 10,000 finished | 1,000,000 finished | ratio |")
        print("|---|---|---|---|---|")
        for name, schema, waiting, history, index in LAYOUTS:
            db = server.new_database("bench_" + name.replace("-", "_"))
            with server.connect(db) as conn:
                schema(conn, server.url(db))
                waiting(conn)
                if index is not None:
                    conn.execute(index[0])
                results: Dict[str, List[float]] = {"with": [], "without": []}
                done = 0
                for size in SIZES:
                    history(conn, done + 1, size)
                    done = size
                    conn.execute("VACUUM ANALYZE")
                    results["with"].append(scrape_ms(server, db, name))
                    if index is not None:
                        conn.execute(index[1])
                        conn.execute("ANALYZE")
                        results["without"].append(scrape_ms(server, db, name))
                        conn.execute(index[0])
                for kind, times in results.items():
                    if not times:
                        continue
                    label = ("the layout's own" if index is None else "documented") \
                        if kind == "with" else "none"
                    small, big = times
                    print(f"| {name} | {label} | {small:.2f} | {big:.2f} | {big / small:.1f} |",
                          flush=True)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
