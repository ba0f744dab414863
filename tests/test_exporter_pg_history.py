"""A million finished tasks cost a scrape no more than ten thousand (with the documented indexes).

The work is measured the way PostgreSQL counts it, not by the clock: ``EXPLAIN (ANALYZE,
BUFFERS)`` of the statements the exporter sends gives the pages each one touched. The
history is made server-side with ``generate_series``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List

import pytest
from prometheus_client import CollectorRegistry

from harbor_tables import DDL, INDEXES, execution, past, run_task
from jobmetrics.exporter import HarborTablesLayout, PostgresExporter
from pg_support import PostgresServer
from promcheck import samples, scrape, value

HISTORY = """
INSERT INTO task (vendor_type, execution_id, job_id, status, status_code, status_revision,
                  status_message, run_count, extra_attrs, creation_time, start_time,
                  update_time, end_time)
SELECT 'TYPE_' || (g %% 5), %(execution)s, 'job' || g,
       (ARRAY['Success', 'Error', 'Stopped'])[1 + g %% 3], 3, 1, '', 1, '{}',
       t, t, t, t
FROM generate_series(%(first)s::int, %(last)s::int) AS g,
     LATERAL (SELECT timestamp '2020-01-01' + g * interval '10 ms' AS t) AS times
"""


@pytest.fixture(scope="module")
def history(pg_server: PostgresServer) -> Iterator[Any]:
    db = pg_server.new_database("harbor_history")
    with pg_server.connect(db) as conn:
        conn.execute(DDL)
        conn.execute(INDEXES)
        yield conn, db


def plan(conn: Any, statement: Any) -> Dict[str, Any]:
    text = statement.as_string(conn)
    (rows,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text).fetchone()
    data = rows if isinstance(rows, list) else json.loads(rows)
    top: Dict[str, Any] = data[0]["Plan"]
    return top


def nodes(node: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def pages(node: Dict[str, Any]) -> int:
    return int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])


def statements(layout: HarborTablesLayout) -> List[Any]:
    low, strict = layout.tail.bound()
    return [layout.active_sql(), layout.tail_start_sql(),
            layout.tail_sql(layout.tail_condition(low, strict))]


def cost(conn: Any, layout: HarborTablesLayout) -> List[int]:
    out = []
    for statement in statements(layout):
        top = plan(conn, statement)
        scans = [n for n in nodes(top) if n["Node Type"] == "Seq Scan"]
        assert scans == [], f"a statement scans a table: {statement.as_string(conn)}"
        out.append(pages(top))
    return out


def test_million_rows_touch_no_more_pages_than_ten_thousand(
    pg_server: PostgresServer, history: Any
) -> None:
    conn, db = history
    gc = execution(conn, "GC")
    for age in range(100):  # jobs in flight: waiting and running
        run_task(conn, gc, "GC", None if age % 2 else "Success", created=past(age))
    costs = {}
    counted = {}
    have = 0
    for size in (10_000, 1_000_000):
        # Bulk load without the indexes, then build them: the faster way to a big table.
        # Every row references the one execution: its foreign-key check is skipped too.
        conn.execute("DROP INDEX task_active_idx, task_end_time_idx")
        conn.execute("SET session_replication_role = replica")
        conn.execute(HISTORY, {"execution": gc, "first": have + 1, "last": size})
        conn.execute("RESET session_replication_role")
        conn.execute(INDEXES)
        have = size
        conn.execute("VACUUM ANALYZE task")
        registry = CollectorRegistry()
        exporter = PostgresExporter(pg_server.url(db), registry=registry, timeout=30)
        scrape(registry)  # the tail starts after the history
        assert isinstance(exporter.layout, HarborTablesLayout)
        costs[size] = cost(conn, exporter.layout)
        run_task(conn, gc, "GC", "Error")
        got = samples(scrape(registry))
        counted[size] = got[("harbor_task_finished_total", (("status", "fail"), ("type", "GC")))]
        assert value(registry, "harbor_task_concurrency", type="GC") == 50
        exporter.close()
    assert counted == {10_000: 1, 1_000_000: 1}
    small, big = costs[10_000], costs[1_000_000]
    # B-tree depth may grow by a level: a few pages, never the history's thousands.
    for s, b in zip(small, big):
        assert b <= 2 * s + 8, (small, big)
