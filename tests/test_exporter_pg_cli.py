"""`jobmetrics-exporter --url postgresql://...` end to end: libpq's settings, errors, redaction."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import pytest

from exporter_support import RedisServer, enqueue
from harbor_tables import DDL, execution, past, run_task
from jobmetrics.exporter.cli import ENV
from pg_support import PASSWORD, USER, PostgresServer
from promcheck import promtool_check, samples
from servers import free_port
from test_exporter_cli import get, run, serve, stop


@pytest.fixture(scope="module")
def harbor_db(pg_server: PostgresServer) -> str:
    db = pg_server.new_database("harbor_cli")
    with pg_server.connect(db) as conn:
        conn.execute(DDL)
        gc = execution(conn, "GARBAGE_COLLECTION")
        run_task(conn, gc, "GARBAGE_COLLECTION", None, created=past(60))
        conn.execute("INSERT INTO task (vendor_type, execution_id, status, status_code,"
                     " creation_time) VALUES ('GARBAGE_COLLECTION', %s, 'Pending', 0, %s)",
                     (gc, past(30)))
    return db


def exporter_cmd(port: int, *args: str) -> List[str]:
    return [sys.executable, "-m", "jobmetrics.exporter", "--port", str(port),
            "--addr", "127.0.0.1", *args]


def scrape_once(cmd: List[str], port: int, extra: Dict[str, str]) -> tuple:
    proc = serve(cmd, port, extra)
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        out = stop(proc)
    return samples(text), text, out


def test_url_flag_serves_harbor_tables(pg_server: PostgresServer, harbor_db: str) -> None:
    port = free_port()
    got, text, out = scrape_once(exporter_cmd(port, "--url", pg_server.url(harbor_db)), port, {})
    assert got[("harbor_task_queue_size", (("type", "GARBAGE_COLLECTION"),))] == 1
    assert 29 <= got[("harbor_task_queue_latency", (("type", "GARBAGE_COLLECTION"),))] <= 90
    assert got[("harbor_task_concurrency", (("type", "GARBAGE_COLLECTION"),))] == 1
    assert got[("harbor_task_finished_total",
                (("status", "success"), ("type", "GARBAGE_COLLECTION")))] == 0
    assert got[("harbor_task_exporter_up", ())] == 1
    assert "reading postgresql://postgres:***@127.0.0.1" in out
    assert PASSWORD not in out and PASSWORD not in text
    promtool_check(text)


def test_libpq_environment_and_pgpass(
    pg_server: PostgresServer, harbor_db: str, tmp_path: Path
) -> None:
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:{USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    port = free_port()
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg_server.port), "PGUSER": USER,
           "PGDATABASE": harbor_db, "PGPASSFILE": str(pgpass),
           ENV["url"]: "postgresql://"}
    got, _, _ = scrape_once(exporter_cmd(port), port, env)
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_queue_size", (("type", "GARBAGE_COLLECTION"),))] == 1


def test_service_file(pg_server: PostgresServer, harbor_db: str, tmp_path: Path) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[registry]\nhost=127.0.0.1\nport={pg_server.port}\nuser={USER}\n"
                        f"dbname={harbor_db}\npassword={PASSWORD}\n")
    port = free_port()
    got, _, out = scrape_once(
        exporter_cmd(port, "--url", "postgresql:///?service=registry", "--namespace", "acme"),
        port, {"PGSERVICEFILE": str(services)},
    )
    assert got[("acme_task_exporter_up", ())] == 1
    assert got[("acme_task_concurrency", (("type", "GARBAGE_COLLECTION"),))] == 1
    assert PASSWORD not in out


def test_url_flag_reads_redis_too(redis_server: RedisServer) -> None:
    import time

    enqueue(redis_server.client(), "{harbor_job_service_namespace}", "GC", time.time())
    port = free_port()
    got, _, _ = scrape_once(exporter_cmd(port, "--url", redis_server.url()), port, {})
    assert got[("harbor_task_queue_size", (("type", "GC"),))] == 1


def test_unreachable_postgres_still_serves_health() -> None:
    port = free_port()
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/db"
    got, text, out = scrape_once(exporter_cmd(port, "--url", url, "--timeout", "1"), port, {})
    assert got[("harbor_task_exporter_up", ())] == 0
    assert PASSWORD not in out and PASSWORD not in text


PG = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:5432/db"


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--url", "http://h/x"], {}, "--url='http://h/x' must start with postgresql://"),
        ([], {ENV["url"]: "mysql://h/x"}, "JOBMETRICS_EXPORTER_URL='mysql://h/x' must start"),
        (["--url", PG, "--layout", "rq"], {}, "layout='rq' is not a PostgreSQL layout"),
        (["--url", "redis://127.0.0.1:6379/0", "--layout", "procrastinate"], {},
         "layout='procrastinate' is not a known layout"),
        (["--url", PG, "--redis-url", "redis://h:6379/0"], {}, "give --url or --redis-url"),
        (["--url", PG, "--key-prefix", "x"], {}, "--key-prefix is for Redis"),
        (["--url", PG + "?bogus=1"], {}, 'invalid URI query parameter: "bogus"'),
        (["--url", "postgresql://u:pw@h:port/db"], {}, "port 'port' is not a port number"),
        (["--layout", "sidekiq"], {}, "'sidekiq' is not a layout: choose one of harbor, rq, "
         "celery, arq, procrastinate, pgqueuer, django-q2"),
    ],
)
def test_bad_option_is_one_line_and_exit_2(
    args: List[str], extra: Dict[str, str], message: str
) -> None:
    proc = run(args, extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line
    assert proc.stderr.startswith("jobmetrics-exporter: error: ")


def test_missing_psycopg_is_a_clear_error() -> None:
    import subprocess

    from test_exporter_cli import env

    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from jobmetrics.exporter.cli import main\n"
        "sys.exit(main(['--port', '0', '--url', 'postgresql://h/db']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env())
    assert proc.returncode == 2
    assert proc.stderr == ("jobmetrics-exporter: error: the PostgreSQL store needs psycopg 3: "
                           "pip install 'jobmetrics[postgres]'\n")
