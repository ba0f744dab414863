"""The Redis store of the exporter: job state read from Redis at scrape time.

The reading mechanism (one read in flight, timeout, cache, health families) is
:class:`~jobmetrics.exporter.store.StoreExporter`'s; this module only says how to reach
Redis and read it through a :class:`~jobmetrics.exporter.layouts.Layout`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from prometheus_client import REGISTRY, CollectorRegistry

from .client import close_client, redis_client
from .layouts import Layout, Reading, make_layout
from .store import StoreExporter

__all__ = ["RedisExporter"]


class RedisExporter(StoreExporter):
    """Harbor's ``harbor_task_*`` families, read from job state kept in Redis.

    >>> exporter = RedisExporter("redis://127.0.0.1:6379/0", layout="rq")  # doctest: +SKIP

    Families (``harbor`` is ``namespace``; the queue label is ``type`` for the ``harbor``
    layout and ``queue`` for ``rq``, ``celery`` and ``arq``):

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
        layout: ``harbor``, ``rq``, ``celery``, ``arq`` or a :class:`Layout` instance.
        key_prefix: the layout's Redis key prefix (``harbor``:
            ``{harbor_job_service_namespace}``; ``rq``: ``rq``; ``celery``: none; ``arq``:
            fixed by arq, none may be given).
        queues: the queues (job types for ``harbor``) to read; discovered when empty
            (``arq`` keeps no list of its queues: ``arq:queue`` unless named).
        namespace: metric namespace, ``harbor`` by default (``""`` for none).
        cache_seconds: serve a successful reading for this long before reading again
            (Harbor's exporter caches 23 s); 0 reads at every scrape.
        timeout: the longest a scrape waits for Redis, in seconds.
        scheduled_total: also emit Harbor's name ``<namespace>_task_scheduled_total``.
        max_queues: the most queues discovered and read per scrape.
        max_pools: the most worker pools reported per job type (``harbor``): a
            ``lock_info`` hash with more fields is read and reported up to this many.
        max_running: the most due jobs per queue checked for running (``arq``; see
            :class:`~jobmetrics.exporter.ArqLayout`).
        registry: registered there (prometheus_client's global one by default); None
            registers nowhere.
    """

    store_name = "Redis"

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
        max_running: int = 1000,
        registry: Optional[CollectorRegistry] = REGISTRY,
    ) -> None:
        if isinstance(layout, Layout):
            if key_prefix is not None or queues:
                raise ValueError(
                    "key_prefix and queues belong to the Layout instance given as layout="
                )
            chosen = layout
        else:
            chosen = make_layout(layout, key_prefix, queues, max_queues, max_pools,
                                 max_running)
        super().__init__(
            chosen, namespace=namespace, cache_seconds=cache_seconds, timeout=timeout,
            scheduled_total=scheduled_total,
        )
        if (redis_url is None) == (client is None):
            raise ValueError("give exactly one of redis_url or client")
        self._client = client if client is not None else redis_client(redis_url or "", timeout)
        self._owns_client = client is None
        self._register(registry)

    def _read(self) -> Reading:
        return self.layout.read(self._client)

    def _close_store(self) -> None:
        if self._owns_client:
            close_client(self._client)
