"""The PostgreSQL store of the exporter: job state read with psycopg 3 at scrape time.

The URL is handed to libpq as it is, so everything libpq reads applies: ``PG*``
environment variables (``PGHOST``, ``PGPASSWORD``, ...), service files
(``?service=name``, ``PGSERVICEFILE``), ``.pgpass`` (``PGPASSFILE``), TLS parameters,
several hosts. The session is read-only, in autocommit, with ``statement_timeout`` set to
the exporter's timeout, so a slow statement is cancelled by the server itself.

psycopg is an optional dependency (``pip install 'jobmetrics[postgres]'``), imported only
when a connection is made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

from prometheus_client import REGISTRY, CollectorRegistry

from ..redact import redact_url
from .layouts import Reading
from .sql_layouts import SqlLayout, make_sql_layout
from .store import StoreExporter

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = ["PostgresExporter", "check_postgres_url", "postgres_connect"]

SCHEMES = ("postgresql://", "postgres://")


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ImportError(
            "the PostgreSQL store needs psycopg 3: pip install 'jobmetrics[postgres]'"
        ) from None


def check_postgres_url(url: object, arg: str = "url") -> str:
    """``url`` if libpq can use it, else a ``ValueError`` saying why (password blanked).

    ``arg`` names the setting in the message (``--url`` on the command line). An empty
    host is fine: libpq then uses ``PGHOST`` or its local socket.
    """
    if not isinstance(url, str):
        raise TypeError(f"{arg} must be a str, got {type(url).__name__}")
    shown = redact_url(url)
    if not url.startswith(SCHEMES):
        raise ValueError(
            f"{arg}={shown!r} must start with postgresql:// or postgres:// "
            "(e.g. postgresql://exporter@db:5432/registry)"
        )
    _require_psycopg()
    import psycopg

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise ValueError(f"{arg}={shown!r} is not a valid PostgreSQL URL: {reason}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"{arg}={shown!r}: port {port!r} is not a port number")
    return url


def postgres_connect(url: str, timeout: float) -> Connection[Tuple[Any, ...]]:
    """A read-only autocommit ``psycopg.Connection`` whose connect and statements take at
    most ``timeout`` (libpq rounds the connect timeout up to whole seconds, at least 2)."""
    _require_psycopg()
    import psycopg
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=max(2, math.ceil(timeout)),
        application_name="jobmetrics-exporter",
        # A peer that vanished without closing the socket is noticed, not waited for.
        keepalives=1,
        keepalives_idle=max(1, math.ceil(timeout)),
        keepalives_interval=1,
        keepalives_count=3,
    )
    try:
        ms = max(1, int(timeout * 1000))
        conn.execute(f"SET statement_timeout = {ms}")
        conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


class PostgresExporter(StoreExporter):
    """The ``harbor_task_*`` families, read from job state kept in PostgreSQL.

    >>> PostgresExporter("postgresql://exporter@db/registry", layout="harbor")  # doctest: +SKIP

    The families are :class:`~jobmetrics.exporter.RedisExporter`'s (``queue_size``,
    ``queue_latency``, ``concurrency``, ``scheduled``, the ``exporter_*`` health) labelled
    by the layout's queue label only, plus ``<ns>_task_finished_total{type|queue,status}``:
    the jobs that finished since the exporter started, ``status`` one of ``success``,
    ``fail``, ``stop``.

    Args:
        url: a libpq URL, ``postgresql://user@host:5432/dbname?...`` (``PG*`` variables,
            service files and ``.pgpass`` apply); the password is never logged.
        layout: ``harbor``, ``procrastinate``, ``pgqueuer``, ``django-q2`` or a
            :class:`~jobmetrics.exporter.SqlLayout` instance.
        queues: the queues (job types for ``harbor``) to read; all when empty.
        namespace: metric namespace, ``harbor`` by default (``""`` for none).
        cache_seconds: serve a successful reading for this long; 0 reads at every scrape.
        timeout: the longest a scrape waits, in seconds; also the statement timeout.
        scheduled_total: also emit Harbor's name ``<namespace>_task_scheduled_total``.
        max_queues: the most queues read per scrape.
        registry: registered there (prometheus_client's global one by default); None
            registers nowhere.
    """

    store_name = "PostgreSQL"

    def __init__(
        self,
        url: str,
        *,
        layout: Union[str, SqlLayout] = "harbor",
        queues: Sequence[str] = (),
        namespace: str = "harbor",
        cache_seconds: float = 0.0,
        timeout: float = 5.0,
        scheduled_total: bool = False,
        max_queues: int = 500,
        registry: Optional[CollectorRegistry] = REGISTRY,
    ) -> None:
        if isinstance(layout, SqlLayout):
            if queues:
                raise ValueError("queues belong to the SqlLayout instance given as layout=")
            chosen = layout
        elif isinstance(layout, str):
            chosen = make_sql_layout(layout, None, queues, max_queues)
        else:
            raise TypeError(
                f"layout must be a name or a SqlLayout, got {type(layout).__name__}"
            )
        super().__init__(
            chosen, namespace=namespace, cache_seconds=cache_seconds, timeout=timeout,
            scheduled_total=scheduled_total,
        )
        self.url = check_postgres_url(url)
        self._conn: Optional[Connection[Tuple[Any, ...]]] = None
        self._register(registry)

    def __repr__(self) -> str:
        return f"PostgresExporter({redact_url(self.url)!r}, layout={self.layout.name!r})"

    def _read(self) -> Reading:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = postgres_connect(self.url, self.timeout)
        conn = self._conn
        try:
            return self.layout.read(conn)
        except psycopg.Error:
            if conn.broken or conn.closed:
                self._close_store()  # reconnect at the next read
            raise

    def _close_store(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
