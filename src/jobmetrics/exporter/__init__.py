"""Job state kept in Redis, exposed as Harbor's ``harbor_task_*`` families at scrape time.

>>> from jobmetrics.exporter import RedisExporter
>>> RedisExporter("redis://127.0.0.1:6379/0", layout="rq")  # doctest: +SKIP

Run it standalone with ``jobmetrics-exporter`` (or ``python -m jobmetrics.exporter``); see
docs/exporter.md. Needs the ``redis`` package: ``pip install 'jobmetrics[redis]'``, imported
only when a client is made.
"""

from __future__ import annotations

from .collector import RedisExporter
from .layouts import (
    CELERY_ENQUEUED_HEADER,
    LAYOUTS,
    CeleryLayout,
    HarborLayout,
    Layout,
    Reading,
    RQLayout,
    make_layout,
    stamp_enqueue_time,
)

__all__ = [
    "CELERY_ENQUEUED_HEADER",
    "LAYOUTS",
    "CeleryLayout",
    "HarborLayout",
    "Layout",
    "RQLayout",
    "Reading",
    "RedisExporter",
    "make_layout",
    "stamp_enqueue_time",
]
