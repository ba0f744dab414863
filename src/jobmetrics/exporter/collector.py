"""The exporter's collector: job state read from Redis at scrape time, with its own health.

Each scrape reads the store through a :class:`~jobmetrics.exporter.layouts.Layout` in a
worker thread and waits at most ``timeout`` seconds for it, so a slow or dead Redis
never hangs a scrape; one read at a time is in flight whatever the number of concurrent
scrapes. A failed or late read drops the task families from that scrape (a stale value
is never served as fresh) and says so in the health families; the next scrape reads
again, so the exporter recovers by itself when Redis returns.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterable, List, Optional, Sequence, Union

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..settings import check_name_part, check_positive
from .client import close_client, redis_client
from .layouts import Layout, Reading, make_layout

__all__ = ["RedisExporter"]

logger = logging.getLogger("jobmetrics.exporter")


class _Snapshot:
    """A successful reading and when (monotonic) it was taken."""

    __slots__ = ("at", "reading")

    def __init__(self, reading: Reading, at: float) -> None:
        self.reading = reading
        self.at = at


class RedisExporter(Collector):
    """Harbor's ``harbor_task_*`` families, read from job state kept in Redis.

    >>> exporter = RedisExporter("redis://127.0.0.1:6379/0", layout="rq")  # doctest: +SKIP

    Families (``harbor`` is ``namespace``; the queue label is ``type`` for the ``harbor``
    layout and ``queue`` for ``rq`` and ``celery``):

    - ``harbor_task_queue_size``: jobs waiting in the queue;
    - ``harbor_task_queue_latency``: seconds since the oldest waiting job was enqueued
      (0 for an empty queue; never negative);
    - ``harbor_task_concurrency``: jobs running now (``type``, ``pool`` for ``harbor``);
    - ``harbor_task_scheduled``: jobs scheduled for later; with ``scheduled_total=True``
      also as Harbor's ``harbor_task_scheduled_total`` (a gauge whose name promtool
      rejects, for dashboards built on Harbor's exporter);
    - ``harbor_task_exporter_up``: 1 when the last read of Redis succeeded, else 0;
    - ``harbor_task_exporter_read_duration_seconds``: how long the last read took;
    - ``harbor_task_exporter_last_success_timestamp_seconds``: when the last read that
      succeeded ended (absent until one has);
    - ``harbor_task_exporter_read_errors_total``: reads that failed or timed out.

    Args:
        redis_url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``, Harbor's
            ``redis+sentinel://s1:26379,s2:26379/master/db``), with Harbor's parameters
            such as ``?idle_timeout_seconds=30``; or give ``client``, a ``redis.Redis``
            of your own, instead.
        layout: ``harbor``, ``rq``, ``celery`` or a :class:`Layout` instance.
        key_prefix: the layout's Redis key prefix (``harbor``:
            ``{harbor_job_service_namespace}``; ``rq``: ``rq``; ``celery``: none).
        queues: the queues (job types for ``harbor``) to read; discovered when empty.
        namespace: metric namespace, ``harbor`` by default (``""`` for none).
        cache_seconds: serve a successful reading for this long before reading again
            (Harbor's exporter caches 23 s); 0 reads at every scrape.
        timeout: the longest a scrape waits for Redis, in seconds.
        scheduled_total: also emit Harbor's name ``<namespace>_task_scheduled_total``.
        max_queues: the most queues discovered and read per scrape.
        max_pools: the most worker pools reported per job type (``harbor``): a
            ``lock_info`` hash with more fields is read and reported up to this many.
        registry: registered there (prometheus_client's global one by default); None
            registers nowhere.
    """

    def __init__(
        self,
        redis_url: Optional[str] = None,
        *,
        client: Any = None,
        layout: Union[str, Layout] = "harbor",
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        namespace: str = "harbor",
        cache_seconds: float = 0.0,
        timeout: float = 5.0,
        scheduled_total: bool = False,
        max_queues: int = 500,
        max_pools: int = 100,
        registry: Optional[CollectorRegistry] = REGISTRY,
    ) -> None:
        check_name_part("namespace", namespace)
        self.timeout = check_positive("timeout", timeout)
        if isinstance(cache_seconds, bool) or not isinstance(cache_seconds, (int, float)):
            raise TypeError(f"cache_seconds must be a number, got {type(cache_seconds).__name__}")
        if not 0 <= cache_seconds < float("inf"):
            raise ValueError(f"cache_seconds must be a finite number >= 0, got {cache_seconds!r}")
        self.cache_seconds = float(cache_seconds)
        if isinstance(layout, Layout):
            if key_prefix is not None or queues:
                raise ValueError(
                    "key_prefix and queues belong to the Layout instance given as layout="
                )
            self.layout = layout
        else:
            self.layout = make_layout(layout, key_prefix, queues, max_queues, max_pools)
        if (redis_url is None) == (client is None):
            raise ValueError("give exactly one of redis_url or client")
        self._client = client if client is not None else redis_client(redis_url or "", timeout)
        self._owns_client = client is None
        self.scheduled_total = bool(scheduled_total)
        self._prefix = f"{namespace}_task_" if namespace else "task_"

        self._lock = threading.Lock()
        self._inflight: Optional[Future[Reading]] = None
        self._snapshot: Optional[_Snapshot] = None
        self._up = False
        self._duration = 0.0
        self._last_success: Optional[float] = None
        self._errors = 0
        self._failing = False
        if registry is not None:
            registry.register(self)

    # -- reading ---------------------------------------------------------------------

    def _read(self) -> Reading:
        return self.layout.read(self._client)

    def _start_read(self) -> Future[Reading]:
        # A daemon thread per read, not an executor: a read stuck on a client without a
        # socket timeout (``client=`` of the caller's) must not keep the interpreter from
        # exiting after close(), and concurrent.futures joins its workers at exit.
        future: Future[Reading] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._read())
            except BaseException as exc:  # handed to the scrape waiting on it
                future.set_exception(exc)

        threading.Thread(target=run, name="jobmetrics-exporter-read", daemon=True).start()
        return future

    def _fresh(self) -> Optional[Reading]:
        """A reading no older than ``cache_seconds``, or None when Redis failed us."""
        with self._lock:
            snap = self._snapshot
            if snap is not None and time.monotonic() - snap.at < self.cache_seconds:
                return snap.reading
            if self._inflight is None or self._inflight.done():
                self._inflight = self._start_read()
            future = self._inflight
        start = time.perf_counter()
        error: Optional[BaseException] = None
        reading: Optional[Reading] = None
        try:
            reading = future.result(timeout=self.timeout)
        except FutureTimeout:
            error = TimeoutError(f"no reply from Redis within {self.timeout:g} s")
        except Exception as exc:
            error = exc
        duration = time.perf_counter() - start
        with self._lock:
            self._duration = duration
            if reading is not None:
                self._up = True
                self._last_success = time.time()
                self._snapshot = _Snapshot(reading, time.monotonic())
                if self._failing:
                    logger.info("jobmetrics exporter: reading Redis again")
                self._failing = False
                return reading
            self._up = False
            self._errors += 1
            self._snapshot = None  # never serve what was read before the failure
            if not self._failing:
                # Logged on the transition only: a Redis that stays down must not flood.
                logger.warning("jobmetrics exporter: reading Redis failed: %s", error)
            self._failing = True
            return None

    # -- exposition ------------------------------------------------------------------

    def _families(self) -> List[Metric]:
        p, layout = self._prefix, self.layout
        fams: List[Metric] = [
            GaugeMetricFamily(
                p + "queue_size", "Jobs waiting in the queue.", labels=[layout.queue_label]
            ),
            GaugeMetricFamily(
                p + "queue_latency",
                "Seconds since the oldest waiting job was enqueued (0 when none waits).",
                labels=[layout.queue_label],
            ),
        ]
        if layout.concurrency_labels is not None:
            fams.append(
                GaugeMetricFamily(
                    p + "concurrency", "Jobs running now.", labels=list(layout.concurrency_labels)
                )
            )
        if layout.scheduled_labels is not None:
            fams.append(
                GaugeMetricFamily(
                    p + "scheduled",
                    "Jobs scheduled to run later.",
                    labels=list(layout.scheduled_labels),
                )
            )
            if self.scheduled_total:
                fams.append(
                    GaugeMetricFamily(
                        p + "scheduled_total",
                        "Jobs scheduled to run later (Harbor's name for "
                        f"{p}scheduled; kept for compatibility).",
                        labels=list(layout.scheduled_labels),
                    )
                )
        return fams

    def _health(self) -> List[Metric]:
        p = self._prefix + "exporter_"
        with self._lock:
            up, duration, last, errors = (
                self._up, self._duration, self._last_success, self._errors
            )
        fams: List[Metric] = [
            GaugeMetricFamily(p + "up", "1 when the last read of Redis succeeded, else 0.",
                              value=1.0 if up else 0.0),
            GaugeMetricFamily(p + "read_duration_seconds",
                              "Seconds the last read of Redis took.", value=duration),
            CounterMetricFamily(p + "read_errors", "Reads of Redis that failed or timed out.",
                                value=errors),
        ]
        if last is not None:
            fams.append(GaugeMetricFamily(
                p + "last_success_timestamp_seconds",
                "Unix time when the last successful read of Redis ended.", value=last))
        return fams

    def describe(self) -> Iterable[Metric]:
        """The families, without reading Redis (used when the collector is registered)."""
        yield from self._families()
        yield from self._health()

    def collect(self) -> Iterable[Metric]:
        """Read Redis (or the cache) and yield every family; health always."""
        reading = self._fresh()
        if reading is not None:
            fams = self._families()
            by_name = {f.name: f for f in fams}
            p = self._prefix
            size, latency = by_name[p + "queue_size"], by_name[p + "queue_latency"]
            assert isinstance(size, GaugeMetricFamily)
            assert isinstance(latency, GaugeMetricFamily)
            for q, v in sorted(reading.queue_size.items()):
                size.add_metric([q], v)
            for q, v in sorted(reading.queue_latency.items()):
                latency.add_metric([q], v)
            for name in ("concurrency", "scheduled", "scheduled_total"):
                fam = by_name.get(p + name)
                values = reading.concurrency if name == "concurrency" else reading.scheduled
                if isinstance(fam, GaugeMetricFamily):
                    for labels, v in sorted(values.items()):
                        fam.add_metric(list(labels), v)
            yield from fams
        yield from self._health()

    def close(self) -> None:
        """Close the Redis connections this exporter made (not those of ``client=``).

        A read still in flight is abandoned: its thread is a daemon, so even a read
        blocked on a ``client=`` without a socket timeout does not keep the process alive.
        """
        with self._lock:
            self._inflight = None
        if self._owns_client:
            close_client(self._client)
