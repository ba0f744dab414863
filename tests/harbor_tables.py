"""Harbor's ``execution``/``task`` tables and the rows Harbor's core writes into them.

The DDL is Harbor's as its migrations leave it (make/migrations/postgresql: the tables
from 0040_2.1.0, ``task.vendor_type`` from 0050_2.2.0 widened to varchar(64),
``status_revision`` bigint from 0181_2.15.3, the btree indexes of 0051 and 0080), written
here by hand with only the columns and indexes that matter. Harbor has no index on
``task.status`` or its times; ``INDEXES`` is the one docs/exporter.md recommends.

The writes follow Harbor's core (src/pkg/task): a task is inserted ``Pending`` with
``status_code`` 0 and zero times (Go's zero ``time.Time``, ``0001-01-01 00:00:00``) when it
is submitted; jobservice's status hooks run ``UpdateStatus``, two statements: one that
bumps ``run_count`` and ``start_time`` when the revision (the job's start, Unix seconds)
changes, one that sets the status, its code and ``end_time`` (now for a final status, the
zero time otherwise). Times are UTC wall-clock ``timestamp`` values, as Harbor's core
runs in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional

DDL = """
CREATE TABLE execution (
    id SERIAL NOT NULL,
    vendor_type varchar(64) NOT NULL,
    vendor_id int,
    status varchar(16),
    status_message text,
    trigger varchar(16) NOT NULL,
    extra_attrs JSON,
    start_time timestamp DEFAULT CURRENT_TIMESTAMP,
    end_time timestamp,
    revision int,
    update_time timestamp,
    PRIMARY KEY (id)
);
CREATE TABLE task (
    id SERIAL PRIMARY KEY NOT NULL,
    vendor_type varchar(64) NOT NULL,
    execution_id int NOT NULL,
    job_id varchar(64),
    status varchar(16) NOT NULL,
    status_code int NOT NULL,
    status_revision bigint,
    status_message text,
    run_count int,
    extra_attrs JSON,
    creation_time timestamp DEFAULT CURRENT_TIMESTAMP,
    start_time timestamp,
    update_time timestamp,
    end_time timestamp,
    FOREIGN KEY (execution_id) REFERENCES execution(id)
);
CREATE INDEX task_execution_id_idx ON task (execution_id);
CREATE INDEX idx_task_job_id ON task (job_id);
CREATE INDEX idx_execution_vendor_type_vendor_id ON execution (vendor_type, vendor_id);
CREATE INDEX idx_execution_start_time ON execution (start_time);
"""

#: The indexes docs/exporter.md recommends (Harbor has neither).
INDEXES = """
CREATE INDEX IF NOT EXISTS task_active_idx ON task (vendor_type, creation_time)
    WHERE status IN ('Pending', 'Running', 'Scheduled');
CREATE INDEX IF NOT EXISTS task_end_time_idx ON task (end_time);
"""

ZERO = datetime(1, 1, 1)
CODES = {"Pending": 0, "Scheduled": 1, "Running": 2, "Stopped": 3, "Error": 3, "Success": 3}
FINAL = ("Stopped", "Error", "Success")


def utcnow() -> datetime:
    """Harbor's ``time.Now()`` as its core stores it: UTC wall clock, no zone."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def execution(conn: Any, vendor_type: str) -> int:
    """As ``executionManager.Create``: a Running execution with a manual trigger."""
    now = utcnow()
    row = conn.execute(
        "INSERT INTO execution (vendor_type, vendor_id, status, status_message, trigger,"
        " extra_attrs, start_time, update_time, end_time, revision)"
        " VALUES (%s, -1, 'Running', '', 'MANUAL', '{}', %s, %s, %s, 0) RETURNING id",
        (vendor_type, now, now, ZERO),
    ).fetchone()
    return int(row[0])


def create_task(conn: Any, execution_id: int, vendor_type: str,
                created: Optional[datetime] = None) -> int:
    """As ``manager.Create``: the Pending record, then the job id jobservice returned."""
    created = created or utcnow()
    row = conn.execute(
        "INSERT INTO task (vendor_type, execution_id, job_id, status, status_code,"
        " status_revision, status_message, run_count, extra_attrs, creation_time,"
        " start_time, update_time, end_time)"
        " VALUES (%s, %s, '', 'Pending', 0, 0, '', 0, '{}', %s, %s, %s, %s) RETURNING id",
        (vendor_type, execution_id, created, ZERO, created, ZERO),
    ).fetchone()
    task_id = int(row[0])
    conn.execute("UPDATE task SET job_id = %s WHERE id = %s", (f"job{task_id:020d}", task_id))
    return task_id


def update_status(conn: Any, task_id: int, status: str, revision: int,
                  now: Optional[datetime] = None) -> None:
    """As ``taskDAO.UpdateStatus`` (the status hook of jobservice)."""
    now = now or utcnow()
    conn.execute(
        "UPDATE task SET run_count = run_count + 1, start_time = %s"
        " WHERE id = %s AND status_revision < %s",
        (datetime.fromtimestamp(revision, timezone.utc).replace(tzinfo=None), task_id, revision),
    )
    code = CODES[status]
    end = now if status in FINAL else ZERO
    conn.execute(
        "UPDATE task SET status = %s, status_code = %s, status_revision = %s,"
        " update_time = %s, end_time = %s"
        " WHERE id = %s AND (status_revision = %s AND status_code < %s OR status_revision < %s)",
        (status, code, revision, now, end, task_id, revision, code, revision),
    )


def run_task(conn: Any, execution_id: int, vendor_type: str, final: Optional[str],
             created: Optional[datetime] = None) -> int:
    """A task submitted, started and (unless ``final`` is None) finished with ``final``."""
    task_id = create_task(conn, execution_id, vendor_type, created)
    revision = int((created or utcnow()).replace(tzinfo=timezone.utc).timestamp()) + 1
    update_status(conn, task_id, "Running", revision)
    if final is not None:
        update_status(conn, task_id, final, revision)
    return task_id


def past(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
