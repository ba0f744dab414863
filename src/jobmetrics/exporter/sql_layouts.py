"""Where job systems keep their jobs in PostgreSQL, and how to read them in bounded work.

A :class:`SqlLayout` turns two statements per scrape into a
:class:`~jobmetrics.exporter.layouts.Reading`:

- the **active** statement groups the jobs that are not finished (waiting, running,
  scheduled) by queue, at most ``max_queues`` groups: its cost follows the jobs in
  flight, never the history;
- the **tail** statement reads the finished jobs whose key (an ``id`` or an end time)
  passes a cursor, at most ``max_rows`` of them, ordered by that key; the cursor is
  written into the statement as a literal, so the planner walks the key's index from
  there. ``<ns>_task_finished_total`` starts at 0 when the exporter starts and grows by
  what the tail reads; the history before the cursor is never read again.

Meanings, the same in every layout: ``queue_size`` counts jobs ready to run now (a job
due later is in ``scheduled``); ``queue_latency`` is the age of the oldest ready job, by
the database's clock, never negative; an empty queue reports 0; ``status`` of
``finished_total`` is ``success``, ``fail`` (an attempt that will be retried included) or
``stop``. Each layout was checked against the job system's own schema and client; see
docs/exporter.md for the tables, the statements and the indexes that keep them cheap.

A layout is a small class: give :meth:`SqlLayout.active_sql`, :meth:`SqlLayout.tail_sql`,
:meth:`SqlLayout.tail_start_sql` and :attr:`SqlLayout.tail_key` to read tables of your own.
"""

from __future__ import annotations

import time
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Deque,
    Dict,
    Hashable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

from .layouts import Labels, Layout, Reading

if TYPE_CHECKING:
    from psycopg.sql import Composable

__all__ = [
    "SQL_LAYOUTS",
    "DjangoQLayout",
    "HarborTablesLayout",
    "PgQueuerLayout",
    "ProcrastinateLayout",
    "SqlLayout",
    "Tail",
    "make_sql_layout",
]

OVERFLOW = "overflow"


class Tail:
    """A cursor over rows that keep arriving in the order of a key, and what they counted.

    Rows become visible in commit order, not key order: a row whose id (or end time) was
    taken just before the cursor moved can commit just after. So each read starts from
    the cursor as it was ``settle_seconds`` ago and skips the rows it has already
    counted (remembered while they are inside that window): a row committed up to
    ``settle_seconds`` late is still counted once. A read returns at most ``max_rows``
    rows; when one returns that many, the next starts at the cursor itself to catch up.

    The first read only sets the cursor (the key's maximum then): what finished before
    the exporter started is not counted.
    """

    def __init__(self, settle_seconds: float = 10.0, max_rows: int = 10_000) -> None:
        self.settle_seconds = settle_seconds
        self.max_rows = max_rows
        self.started = False
        self.cursor: Any = None  # the greatest key read (None: no row yet)
        self._floor: Any = None  # the key's maximum when the tail started
        self._history: Deque[Tuple[float, Any]] = deque()  # (monotonic, cursor) per read
        self._seen: Dict[Hashable, Any] = {}  # row identity -> key, inside the window
        self._behind = False
        self.counts: Dict[Labels, float] = {}

    def start(self, floor: Any) -> None:
        """Begin after ``floor`` (the key's maximum now; None for an empty table)."""
        self.started = True
        self.cursor = self._floor = floor

    def bound(self, now: Optional[float] = None) -> Tuple[Any, bool]:
        """``(key, strict)``: read the rows with a key above (``strict``) or from ``key``.

        ``key`` None means from the first row.
        """
        if self._behind:
            return self.cursor, False
        return self._settled(time.monotonic() if now is None else now)

    def _settled(self, now: float) -> Tuple[Any, bool]:
        """The start of a read that re-checks the last ``settle_seconds``."""
        low: Any = self._floor
        for at, cursor in self._history:
            if at > now - self.settle_seconds:
                break
            low = cursor
        if low is None or (self._floor is not None and low <= self._floor):
            return self._floor, True
        return low, False

    def take(
        self,
        rows: Sequence[Tuple[Hashable, Any, Optional[Labels]]],
        now: Optional[float] = None,
    ) -> int:
        """Count the ``(identity, key, labels)`` rows a read returned (labels None: pass the
        row without counting it); returns how many were counted."""
        now = time.monotonic() if now is None else now
        new = 0
        for ident, key, labels in rows:
            if ident in self._seen:
                continue
            self._seen[ident] = key
            if self.cursor is None or key > self.cursor:
                self.cursor = key
            if labels is not None:
                self.counts[labels] = self.counts.get(labels, 0.0) + 1.0
                new += 1
        self._behind = len(rows) >= self.max_rows
        self._history.append((now, self.cursor))
        # Keep one entry older than the window: it is the next read's start.
        while len(self._history) > 1 and self._history[1][0] <= now - self.settle_seconds:
            self._history.popleft()
        # Forget only what no later read can return again.
        low, _ = self._settled(now)
        if low is not None:
            self._seen = {i: k for i, k in self._seen.items() if k >= low}
        return new


class SqlLayout(Layout):
    """How one job system keeps its jobs in PostgreSQL; subclasses give the statements.

    ``queues`` fixes the queues (job types for ``harbor``) to read; when empty every queue
    with jobs is read, at most ``max_queues`` of them (later ones in the finished counter
    fold into ``queue="overflow"``). Tables are found through the connection's
    ``search_path`` (``?options=-csearch_path%3Dmyschema`` in the URL for another schema).
    """

    concurrency_labels: Optional[Labels] = None
    scheduled_labels: Optional[Labels] = None
    finished_labels: Optional[Labels] = None
    #: Seconds a row may commit after its key was taken and still be counted (see Tail).
    settle_seconds = 10.0
    #: Most finished rows read per scrape; a larger backlog is read over several scrapes.
    max_rows = 10_000
    #: The column the tail follows (an id or an end time), as :meth:`tail_sql` names it.
    tail_key = "id"
    #: Raw status -> ``success`` / ``fail`` / ``stop``, for the tail's statuses.
    statuses: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        max_queues: int = 500,
    ) -> None:
        if key_prefix is not None:
            raise ValueError(
                f"key_prefix is for the Redis layouts; the {self.name} layout finds its "
                "tables through the URL's search_path (?options=-csearch_path%3Dschema)"
            )
        super().__init__(None, queues, max_queues)
        self.tail = Tail(self.settle_seconds, self.max_rows)
        self._known: Dict[str, None] = dict.fromkeys(self.queues)

    # -- statements, given by each layout ----------------------------------------------

    def active_sql(self) -> Composable:
        """Rows ``(queue, ready, latency seconds or NULL, running, scheduled)``, one per queue."""
        raise NotImplementedError

    def tail_start_sql(self) -> Composable:
        """One row, one column: the tail key's greatest value now (NULL when none)."""
        raise NotImplementedError

    def tail_sql(self, condition: Composable) -> Composable:
        """Rows ``(identity, key, queue, raw status)`` where ``condition`` holds on the key,
        ordered by the key, at most :attr:`max_rows`."""
        raise NotImplementedError

    # -- helpers for the statements ----------------------------------------------------

    def queue_filter(self, column: str) -> Composable:
        """``AND <column> = ANY(<queues>)`` when ``queues`` was given, else nothing."""
        from psycopg import sql

        if not self.queues:
            return sql.SQL("")
        return sql.SQL(" AND {} = ANY({}::text[])").format(
            sql.SQL(column), sql.Literal(list(self.queues))
        )

    @staticmethod
    def key_condition(column: str, key: Any, strict: bool) -> Composable:
        """``<column> > <key literal>`` (or ``>=``); every row with a key for no key."""
        from psycopg import sql

        if key is None:
            return sql.SQL("{} IS NOT NULL").format(sql.SQL(column))
        op = ">" if strict else ">="
        return sql.SQL("{} {} {}").format(sql.SQL(column), sql.SQL(op), sql.Literal(key))

    # -- reading -----------------------------------------------------------------------

    def _remember(self, queue: str) -> str:
        if queue in self._known:
            return queue
        if len(self._known) >= self.max_queues:
            return OVERFLOW
        self._known[queue] = None
        return queue

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Both statements through ``client`` (a psycopg 3 connection), as one Reading."""
        out = Reading()
        rows = client.execute(self.active_sql()).fetchall()
        out.commands += 1
        for queue, ready, latency, running, scheduled in rows:
            queue = self._remember(str(queue))
            if queue == OVERFLOW:
                continue
            out.queue_size[queue] = float(ready)
            out.queue_latency[queue] = max(0.0, float(latency)) if ready and latency else 0.0
            if self.concurrency_labels is not None:
                out.concurrency[(queue,)] = float(running)
            if self.scheduled_labels is not None:
                out.scheduled[(queue,)] = float(scheduled)
        if self.finished_labels is not None:
            out.commands += self._read_tail(client, now)
            out.finished = dict(self.tail.counts)
        for queue in self._known:
            # A queue seen before (or named in queues) with nothing in flight: 0, not absent.
            out.queue_size.setdefault(queue, 0.0)
            out.queue_latency.setdefault(queue, 0.0)
            if self.concurrency_labels is not None:
                out.concurrency.setdefault((queue,), 0.0)
            if self.scheduled_labels is not None:
                out.scheduled.setdefault((queue,), 0.0)
            if self.finished_labels is not None:
                # Every counter exists from the start, so rate() sees its first increase.
                for status in sorted(set(self.statuses.values())):
                    out.finished.setdefault((queue, status), 0.0)
        return out

    def _read_tail(self, client: Any, now: Optional[float]) -> int:
        if not self.tail.started:
            (floor,) = client.execute(self.tail_start_sql()).fetchone()
            self.tail.start(floor)
            return 1
        low, strict = self.tail.bound(now)
        rows = client.execute(self.tail_sql(self.tail_condition(low, strict))).fetchall()
        counted: List[Tuple[Hashable, Any, Optional[Labels]]] = []
        for ident, key, queue, status in rows:
            mapped = self.statuses.get(str(status))
            labels = None if mapped is None else (self._remember(str(queue)), mapped)
            counted.append((ident, key, labels))
        self.tail.take(counted, now)
        return 1

    def tail_condition(self, key: Any, strict: bool) -> Composable:
        """The condition on :attr:`tail_key` handed to :meth:`tail_sql`."""
        return self.key_condition(self.tail_key, key, strict)


class HarborTablesLayout(SqlLayout):
    """Harbor's ``task`` table (core's execution/task model), one queue per job type.

    A task is created ``Pending`` when core submits it to jobservice, becomes ``Running``
    (or ``Scheduled``) by jobservice's status hooks, and ends ``Success``, ``Error`` or
    ``Stopped`` with ``end_time`` set. ``vendor_type`` is the job type. The times are
    ``timestamp`` without time zone, read as UTC (Harbor's containers and database run in
    UTC).
    """

    name = "harbor"
    queue_label = "type"
    concurrency_labels = ("type",)
    scheduled_labels = ("type",)
    finished_labels = ("type", "status")
    tail_key = "end_time"
    statuses: ClassVar[Mapping[str, str]] = {
        "Success": "success", "Error": "fail", "Stopped": "stop",
    }

    def active_sql(self) -> Composable:
        """Pending (ready), Running and Scheduled tasks per ``vendor_type``."""
        from psycopg import sql

        return sql.SQL(
            "SELECT vendor_type,"
            " count(*) FILTER (WHERE status = 'Pending'),"
            " EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC')"
            " - min(creation_time) FILTER (WHERE status = 'Pending'))::float8,"
            " count(*) FILTER (WHERE status = 'Running'),"
            " count(*) FILTER (WHERE status = 'Scheduled')"
            " FROM task WHERE status IN ('Pending', 'Running', 'Scheduled'){}"
            " GROUP BY vendor_type ORDER BY vendor_type LIMIT {}"
        ).format(self.queue_filter("vendor_type"), sql.Literal(self.max_queues))

    def tail_start_sql(self) -> Composable:
        """The latest ``end_time`` of a finished task."""
        from psycopg import sql

        return sql.SQL(
            "SELECT max(end_time) FROM task WHERE status IN ('Success', 'Error', 'Stopped')"
        )


    def tail_sql(self, condition: Composable) -> Composable:
        """Finished tasks by ``end_time``; a task run again and finished again counts again."""
        from psycopg import sql

        return sql.SQL(
            "SELECT ROW(id, end_time)::text, end_time, vendor_type, status FROM task"
            " WHERE status IN ('Success', 'Error', 'Stopped') AND {}{}"
            " ORDER BY end_time LIMIT {}"
        ).format(condition, self.queue_filter("vendor_type"), sql.Literal(self.max_rows))


_PROCRASTINATE_READY = "status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"


class ProcrastinateLayout(SqlLayout):
    """Procrastinate's ``procrastinate_jobs`` and ``procrastinate_events`` (by queue).

    A deferred job is ``todo`` (due now, or at ``scheduled_at``), a worker makes it
    ``doing``; each status change is an event row (trigger-written, ``bigserial`` id).
    The finished counter tails the events: ``succeeded`` is success, ``failed`` and
    ``deferred_for_retry`` (a failed attempt that will be retried) are fail,
    ``cancelled`` and ``aborted`` are stop.
    """

    name = "procrastinate"
    queue_label = "queue"
    concurrency_labels = ("queue",)
    scheduled_labels = ("queue",)
    finished_labels = ("queue", "status")
    tail_key = "e.id"
    statuses: ClassVar[Mapping[str, str]] = {
        "succeeded": "success", "failed": "fail", "deferred_for_retry": "fail",
        "cancelled": "stop", "aborted": "stop",
    }

    def active_sql(self) -> Composable:
        """``todo``/``doing`` per queue; the latency of the oldest ready job by ``min(id)``,
        from when it became due (its ``scheduled_at``, or its last deferred event)."""
        from psycopg import sql

        return sql.SQL(
            "WITH q AS (SELECT queue_name,"
            " count(*) FILTER (WHERE {ready}) AS ready,"
            " min(id) FILTER (WHERE {ready}) AS oldest,"
            " count(*) FILTER (WHERE status = 'doing') AS running,"
            " count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS later"
            " FROM procrastinate_jobs WHERE status IN ('todo', 'doing'){filter}"
            " GROUP BY queue_name ORDER BY queue_name LIMIT {limit})"
            " SELECT q.queue_name, q.ready,"
            " (SELECT EXTRACT(EPOCH FROM now() - GREATEST(j.scheduled_at,"
            " (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id"
            " AND e.type IN ('deferred', 'deferred_for_retry', 'retried'))))::float8"
            " FROM procrastinate_jobs j WHERE j.id = q.oldest),"
            " q.running, q.later FROM q ORDER BY q.queue_name"
        ).format(
            ready=sql.SQL(_PROCRASTINATE_READY), filter=self.queue_filter("queue_name"),
            limit=sql.Literal(self.max_queues),
        )

    def tail_start_sql(self) -> Composable:
        """The last event id."""
        from psycopg import sql

        return sql.SQL("SELECT max(id) FROM procrastinate_events")


    def tail_sql(self, condition: Composable) -> Composable:
        """Final events by id, with their job's queue."""
        from psycopg import sql

        types = sql.SQL(", ").join(sql.Literal(t) for t in self.statuses)
        return sql.SQL(
            "SELECT e.id, e.id, j.queue_name, e.type::text FROM procrastinate_events e"
            " JOIN procrastinate_jobs j ON j.id = e.job_id"
            " WHERE e.type IN ({}) AND {}{} ORDER BY e.id LIMIT {}"
        ).format(types, condition, self.queue_filter("j.queue_name"),
                 sql.Literal(self.max_rows))


class PgQueuerLayout(SqlLayout):
    """pgqueuer's ``pgqueuer`` (jobs in flight) and ``pgqueuer_log`` (by entrypoint).

    An enqueued job is ``queued`` (due at ``execute_after``), a queue manager makes it
    ``picked``; when it ends the row leaves ``pgqueuer`` (or stays ``failed`` when its
    entrypoint holds failures) and ``pgqueuer_log`` gets a row (``bigserial`` id):
    ``successful`` is success, ``exception`` and ``failed`` are fail, ``canceled`` and
    ``deleted`` are stop. The entrypoint is the ``queue`` label.
    """

    name = "pgqueuer"
    queue_label = "queue"
    concurrency_labels = ("queue",)
    scheduled_labels = ("queue",)
    finished_labels = ("queue", "status")
    statuses: ClassVar[Mapping[str, str]] = {
        "successful": "success", "exception": "fail", "failed": "fail",
        "canceled": "stop", "deleted": "stop",
    }

    def active_sql(self) -> Composable:
        """``queued``/``picked`` per entrypoint; latency from when the oldest ready job
        became due (``created``, or a later ``execute_after``)."""
        from psycopg import sql

        ready = sql.SQL("status = 'queued' AND execute_after <= now()")
        return sql.SQL(
            "SELECT entrypoint,"
            " count(*) FILTER (WHERE {ready}),"
            " EXTRACT(EPOCH FROM now() - min(GREATEST(created, execute_after))"
            " FILTER (WHERE {ready}))::float8,"
            " count(*) FILTER (WHERE status = 'picked'),"
            " count(*) FILTER (WHERE status = 'queued' AND execute_after > now())"
            " FROM pgqueuer WHERE status IN ('queued', 'picked'){filter}"
            " GROUP BY entrypoint ORDER BY entrypoint LIMIT {limit}"
        ).format(ready=ready, filter=self.queue_filter("entrypoint"),
                 limit=sql.Literal(self.max_queues))

    def tail_start_sql(self) -> Composable:
        """The last log id."""
        from psycopg import sql

        return sql.SQL("SELECT max(id) FROM pgqueuer_log")


    def tail_sql(self, condition: Composable) -> Composable:
        """Final log rows by id."""
        from psycopg import sql

        statuses = sql.SQL(", ").join(sql.Literal(t) for t in self.statuses)
        return sql.SQL(
            "SELECT id, id, entrypoint, status::text FROM pgqueuer_log"
            " WHERE status IN ({}) AND {}{} ORDER BY id LIMIT {}"
        ).format(statuses, condition, self.queue_filter("entrypoint"),
                 sql.Literal(self.max_rows))


class DjangoQLayout(SqlLayout):
    """django-q2 with its ORM broker: ``django_q_ormq`` and ``django_q_task`` (by cluster).

    ``async_task`` inserts an ``OrmQ`` row whose ``key`` is the cluster name and whose
    ``lock`` is the enqueue time; a cluster's pusher takes it by moving ``lock`` to
    now + ``retry`` seconds, and deletes it once the result is saved. So a row whose
    ``lock`` has passed is waiting (a task whose worker died waits again once its lock
    expires), one whose ``lock`` is ahead is in flight. Results land in
    ``django_q_task`` with ``stopped`` and ``success``: the tail reads them by
    ``stopped``; a failed task run again and stopped again counts again. The ORM broker
    has no delayed tasks (schedules live in ``django_q_schedule``), so no ``scheduled``.
    """

    name = "django-q2"
    queue_label = "queue"
    concurrency_labels = ("queue",)
    finished_labels = ("queue", "status")
    tail_key = "stopped"
    statuses: ClassVar[Mapping[str, str]] = {"true": "success", "false": "fail"}

    def active_sql(self) -> Composable:
        """Waiting (``lock <= now()``) and in-flight rows per ``key``."""
        from psycopg import sql

        return sql.SQL(
            "SELECT key,"
            " count(*) FILTER (WHERE lock <= now()),"
            " EXTRACT(EPOCH FROM now() - min(lock) FILTER (WHERE lock <= now()))::float8,"
            " count(*) FILTER (WHERE lock > now()),"
            " 0"
            " FROM django_q_ormq WHERE TRUE{}"
            " GROUP BY key ORDER BY key LIMIT {}"
        ).format(self.queue_filter("key"), sql.Literal(self.max_queues))

    def tail_start_sql(self) -> Composable:
        """The latest ``stopped``."""
        from psycopg import sql

        return sql.SQL("SELECT max(stopped) FROM django_q_task")


    def tail_sql(self, condition: Composable) -> Composable:
        """Results by ``stopped``, labelled by the cluster that ran them."""
        from psycopg import sql

        return sql.SQL(
            "SELECT ROW(id, stopped)::text, stopped, COALESCE(cluster, 'unknown'),"
            " CASE WHEN success THEN 'true' ELSE 'false' END FROM django_q_task"
            " WHERE {}{} ORDER BY stopped LIMIT {}"
        ).format(condition, self.queue_filter("cluster"), sql.Literal(self.max_rows))


#: SQL layouts by ``--layout`` name.
SQL_LAYOUTS: Dict[str, type] = {
    cls.name: cls
    for cls in (HarborTablesLayout, ProcrastinateLayout, PgQueuerLayout, DjangoQLayout)
}


def make_sql_layout(
    name: str,
    key_prefix: Optional[str] = None,
    queues: Sequence[str] = (),
    max_queues: int = 500,
) -> SqlLayout:
    """The SQL layout called ``name`` (``harbor``, ``procrastinate``, ``pgqueuer``,
    ``django-q2``)."""
    try:
        cls = SQL_LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"layout={name!r} is not a PostgreSQL layout: choose one of {', '.join(SQL_LAYOUTS)}"
        ) from None
    layout: SqlLayout = cls(key_prefix=key_prefix, queues=queues, max_queues=max_queues)
    return layout
