"""What every store the exporter reads shares: one read in flight, a timeout, a cache, health.

:class:`StoreExporter` is a prometheus_client collector that turns a store's
:class:`~jobmetrics.exporter.layouts.Reading` into the ``<ns>_task_*`` families. Each scrape
reads the store in a worker thread and waits at most ``timeout`` seconds for it, so a slow
or dead store never hangs a scrape; one read at a time is in flight whatever the number of
concurrent scrapes. A failed or late read drops the task families from that scrape (a
stale value is never served as fresh) and says so in the health families; the next scrape
reads again, so the exporter recovers by itself when the store returns.

The stores (:class:`~jobmetrics.exporter.RedisExporter`,
:class:`~jobmetrics.exporter.PostgresExporter`) only say how to read and how to close.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Iterable, List, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..settings import check_name_part, check_positive
from .layouts import Layout, Reading

__all__ = ["StoreExporter"]

logger = logging.getLogger("jobmetrics.exporter")


class _Snapshot:
    """A successful reading and when (monotonic) it was taken."""

    __slots__ = ("at", "reading")

    def __init__(self, reading: Reading, at: float) -> None:
        self.reading = reading
        self.at = at


def check_cache_seconds(value: object) -> float:
    """``cache_seconds`` as a float, or a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cache_seconds must be a number, got {type(value).__name__}")
    if not 0 <= value < float("inf"):
        raise ValueError(f"cache_seconds must be a finite number >= 0, got {value!r}")
    return float(value)


class StoreExporter(Collector):
    """The ``<ns>_task_*`` families of a :class:`Layout`, read from a store at scrape time.

    Subclasses set :attr:`store_name` and implement :meth:`_read` (one pass over the
    store, run in the reader thread; raise on failure) and :meth:`_close_store`.

    Args:
        layout: the layout whose families are exposed.
        namespace: metric namespace, ``harbor`` by default (``""`` for none).
        cache_seconds: serve a successful reading for this long before reading again.
        timeout: the longest a scrape waits for the store, in seconds.
        scheduled_total: also emit Harbor's name ``<namespace>_task_scheduled_total``.
    """

    #: How the store is named in help texts and log lines.
    store_name = "the store"

    def __init__(
        self,
        layout: Layout,
        *,
        namespace: str = "harbor",
        cache_seconds: float = 0.0,
        timeout: float = 5.0,
        scheduled_total: bool = False,
    ) -> None:
        check_name_part("namespace", namespace)
        self.timeout = check_positive("timeout", timeout)
        self.cache_seconds = check_cache_seconds(cache_seconds)
        self.layout = layout
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

    def _register(self, registry: Optional[CollectorRegistry]) -> None:
        if registry is not None:
            registry.register(self)

    # -- the store -------------------------------------------------------------------

    def _read(self) -> Reading:
        """One pass over the store through :attr:`layout` (in the reader thread)."""
        raise NotImplementedError

    def _close_store(self) -> None:
        """Release what the exporter opened to read the store."""

    # -- reading ---------------------------------------------------------------------

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
        """A reading no older than ``cache_seconds``, or None when the store failed us."""
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
            error = TimeoutError(f"no reply from {self.store_name} within {self.timeout:g} s")
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
                    logger.info("jobmetrics exporter: reading %s again", self.store_name)
                self._failing = False
                return reading
            self._up = False
            self._errors += 1
            self._snapshot = None  # never serve what was read before the failure
            if not self._failing:
                # Logged on the transition only: a store that stays down must not flood.
                logger.warning(
                    "jobmetrics exporter: reading %s failed: %s", self.store_name, error
                )
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
        if layout.finished_labels is not None:
            fams.append(
                CounterMetricFamily(
                    p + "finished",
                    "Jobs that finished since the exporter started, by status "
                    "(success, fail, stop).",
                    labels=list(layout.finished_labels),
                )
            )
        return fams

    def _health(self) -> List[Metric]:
        p, store = self._prefix + "exporter_", self.store_name
        with self._lock:
            up, duration, last, errors = (
                self._up, self._duration, self._last_success, self._errors
            )
        fams: List[Metric] = [
            GaugeMetricFamily(p + "up", f"1 when the last read of {store} succeeded, else 0.",
                              value=1.0 if up else 0.0),
            GaugeMetricFamily(p + "read_duration_seconds",
                              f"Seconds the last read of {store} took.", value=duration),
            CounterMetricFamily(p + "read_errors", f"Reads of {store} that failed or timed out.",
                                value=errors),
        ]
        if last is not None:
            fams.append(GaugeMetricFamily(
                p + "last_success_timestamp_seconds",
                f"Unix time when the last successful read of {store} ended.", value=last))
        return fams

    def describe(self) -> Iterable[Metric]:
        """The families, without reading the store (used when the collector is registered)."""
        yield from self._families()
        yield from self._health()

    def collect(self) -> Iterable[Metric]:
        """Read the store (or the cache) and yield every family; health always."""
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
            finished = by_name.get(p + "finished")
            if isinstance(finished, CounterMetricFamily):
                for labels, v in sorted(reading.finished.items()):
                    finished.add_metric(list(labels), v)
            yield from fams
        yield from self._health()

    def close(self) -> None:
        """Close the connections this exporter made, after the read in flight, if any,
        which is waited for at most ``timeout``. The reader thread is a daemon: even a
        read blocked on a ``client=`` without a socket timeout does not keep the process
        alive."""
        with self._lock:
            inflight, self._inflight = self._inflight, None
        if inflight is not None:
            # A connection must not be closed under the read using it; the read itself
            # is bounded by the store's timeouts.
            try:
                inflight.result(timeout=self.timeout)
            except Exception:
                pass
        try:
            self._close_store()
        except Exception:
            pass
