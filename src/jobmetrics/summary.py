"""``QuantileSummary``: a Prometheus summary that also exposes quantiles.

prometheus_client's ``Summary`` exposes only ``_count`` and ``_sum``. This one adds
``{quantile="..."}`` samples over a sliding window, from a mergeable sketch with a
relative-error guarantee (see :mod:`jobmetrics.sketch`), at about the cost of a
``Histogram.observe``.
"""

from __future__ import annotations

import numbers
import re
import threading
from collections.abc import Iterable, Sequence
from time import perf_counter
from typing import Dict, List, Optional, Tuple

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import _errors
from .cells import MemoryStore
from .collect import merge
from .durations import Duration, emit_duration
from .settings import DEFAULT_QUANTILES, Settings, check_name_part

__all__ = ["QuantileSummary"]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _as_float(amount: object) -> float:
    # Checked here, not at scrape time: one complex number or array accepted now would
    # fail every later scrape. numpy's scalars register as numbers.Real.
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"observe() takes a real number, got {type(amount).__name__}")
    return float(amount)


class _Child:
    __slots__ = ("_series", "_store")

    def __init__(self, store: MemoryStore, name: str, labels: Tuple[str, ...],
                 settings: Settings) -> None:
        self._store = store
        with store.lock:
            self._series = Duration(store, name, labels, settings, "summary")

    def observe(self, amount: float) -> None:
        """Record one observation (a real number: ``TypeError`` for anything else)."""
        if type(amount) is not float:
            amount = _as_float(amount)
        now = perf_counter()
        try:
            with self._store.lock:
                self._series.observe(amount, now)
        except Exception as exc:
            _errors.report("QuantileSummary.observe", exc)


class QuantileSummary(Collector):
    """A summary with quantiles: ``s.labels(...).observe(v)`` or ``s.observe(v)``.

    Exposes ``name{quantile="q"}`` for each of ``quantiles`` (over the last ``max_age``
    seconds, kept in ``age_buckets`` buckets) plus ``name_sum`` and ``name_count`` (since
    start). Quantile estimates are within ``relative_accuracy`` of the exact value.
    Registered on ``registry`` at construction (pass ``registry=None`` not to).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        *,
        namespace: str = "",
        subsystem: str = "",
        registry: Optional[CollectorRegistry] = REGISTRY,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        max_age: float = 600.0,
        age_buckets: int = 5,
        relative_accuracy: float = 0.01,
    ) -> None:
        check_name_part("namespace", namespace)
        check_name_part("subsystem", subsystem)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        full = "_".join(p for p in (namespace, subsystem, name) if p)
        if not _METRIC_NAME.match(full):
            raise ValueError(f"name={full!r} is not a valid Prometheus metric name")
        if not isinstance(documentation, str):
            raise TypeError(f"documentation must be a str, got {type(documentation).__name__}")
        if isinstance(labelnames, str):
            raise TypeError("labelnames must be a sequence of str, not one str")
        names = tuple(labelnames)
        for ln in names:
            if not isinstance(ln, str):
                raise TypeError(f"labelnames must hold str, got {type(ln).__name__}")
            if not _LABEL_NAME.match(ln) or ln.startswith("__") or ln == "quantile":
                raise ValueError(f"labelnames: {ln!r} is not a valid summary label name")
        if len(set(names)) != len(names):
            raise ValueError(f"labelnames holds a name twice: {names!r}")
        self._settings = Settings(
            namespace="x", subsystem="", quantiles=tuple(quantiles), max_age=max_age,
            age_buckets=age_buckets, relative_accuracy=relative_accuracy,
        )
        self.name = full
        self.documentation = documentation
        self.labelnames = names
        self._lock = threading.Lock()
        self._store = MemoryStore()
        self._children: Dict[Tuple[str, ...], _Child] = {}
        self._unlabelled = None if names else self._child(())
        if registry is not None:
            registry.register(self)

    def _child(self, key: Tuple[str, ...]) -> _Child:
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = _Child(self._store, self.name, key,
                                                         self._settings)
        return child

    def labels(self, *values: object, **kwvalues: object) -> _Child:
        """The child for one label set (positional or by name), created on first use."""
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if values and kwvalues:
            raise ValueError("give label values positionally or by name, not both")
        if kwvalues:
            if set(kwvalues) != set(self.labelnames):
                raise ValueError(f"expected labels {self.labelnames}, got {tuple(kwvalues)}")
            values = tuple(kwvalues[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"expected {len(self.labelnames)} label values, got {len(values)}")
        return self._child(tuple(str(v) for v in values))

    def observe(self, amount: float) -> None:
        """Record one observation (only for a summary without labels)."""
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels: use .labels(...).observe()")
        self._unlabelled.observe(amount)

    def describe(self) -> List[Metric]:
        return [Metric(self.name, self.documentation, "summary")]

    def collect(self) -> List[Metric]:
        metric = Metric(self.name, self.documentation, "summary")
        settings = self._settings
        merged = merge(self._store.snapshots(), {self.name},
                       {self.name: settings.max_age / settings.age_buckets},
                       settings.age_buckets, perf_counter())
        by: Dict[Tuple[str, ...], Dict[Tuple[int, ...], float]] = {}
        for (_, labels, part), v in merged.items():
            by.setdefault(labels, {})[part] = v
        for labels in list(self._children):
            emit_duration(metric, dict(zip(self.labelnames, labels)), by.get(labels, {}),
                          settings)
        return [metric]
