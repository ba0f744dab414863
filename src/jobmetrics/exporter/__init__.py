"""Job state kept in Redis or PostgreSQL, exposed as Harbor's ``harbor_task_*`` families.

>>> from jobmetrics.exporter import PostgresExporter, RedisExporter
>>> RedisExporter("redis://127.0.0.1:6379/0", layout="rq")  # doctest: +SKIP
>>> PostgresExporter("postgresql://exporter@db/registry", layout="harbor")  # doctest: +SKIP

Run it standalone with ``jobmetrics-exporter`` (or ``python -m jobmetrics.exporter``); see
docs/exporter.md. Redis needs ``pip install 'jobmetrics[redis]'``, PostgreSQL
``pip install 'jobmetrics[postgres]'`` (psycopg 3); each is imported only when a
connection is made.
"""

from __future__ import annotations

from .collector import RedisExporter
from .layouts import (
    ARQ_DEFAULT_QUEUE,
    CELERY_ENQUEUED_HEADER,
    LAYOUTS,
    ArqLayout,
    CeleryLayout,
    HarborLayout,
    Layout,
    Reading,
    RQLayout,
    make_layout,
    stamp_enqueue_time,
)
from .postgres import PostgresExporter
from .sql_layouts import (
    SQL_LAYOUTS,
    DjangoQLayout,
    HarborTablesLayout,
    PgQueuerLayout,
    ProcrastinateLayout,
    SqlLayout,
    Tail,
    make_sql_layout,
)
from .store import StoreExporter

__all__ = [
    "ARQ_DEFAULT_QUEUE",
    "CELERY_ENQUEUED_HEADER",
    "LAYOUTS",
    "SQL_LAYOUTS",
    "ArqLayout",
    "CeleryLayout",
    "DjangoQLayout",
    "HarborLayout",
    "HarborTablesLayout",
    "Layout",
    "PgQueuerLayout",
    "PostgresExporter",
    "ProcrastinateLayout",
    "RQLayout",
    "Reading",
    "RedisExporter",
    "SqlLayout",
    "StoreExporter",
    "Tail",
    "make_layout",
    "make_sql_layout",
    "stamp_enqueue_time",
]
