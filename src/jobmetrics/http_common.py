"""What the ASGI and WSGI middleware share: labels kept bounded, excluded paths."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, FrozenSet, Optional, Set, Tuple

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["METHODS", "OTHER_METHOD", "OVERFLOW", "UNKNOWN", "LabelPolicy"]

logger = logging.getLogger("jobmetrics")

#: Methods kept as they are; any other becomes ``OTHER_METHOD`` (a client can send any).
METHODS: FrozenSet[str] = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
OTHER_METHOD = "other"
#: ``operation`` of a request that matched no route: never its raw path.
UNKNOWN = "unknown"
#: ``operation`` of new label sets once the series budget is spent.
OVERFLOW = "overflow"


class LabelPolicy:
    """Method folding, excluded paths and the series budget of one middleware.

    The budget counts distinct ``(method, code, operation)`` label sets; past
    ``max_series`` a new one is recorded with ``operation="overflow"`` (method and code
    are bounded already), and a warning is logged once. In multi-process mode each
    process keeps its own budget.
    """

    __slots__ = ("_lock", "_seen", "_warned", "exclude", "max_series")

    def __init__(self, metrics: JobMetrics, exclude_paths: Optional[Iterable[str]],
                 max_series: int) -> None:
        if isinstance(max_series, bool) or not isinstance(max_series, int):
            raise TypeError(f"max_series must be an int, got {type(max_series).__name__}")
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series!r}")
        if exclude_paths is None:
            exclude_paths = (metrics.path,)
        elif isinstance(exclude_paths, str):
            raise TypeError("exclude_paths must be a collection of paths, not one str")
        for p in exclude_paths:
            if not isinstance(p, str) or not p.startswith("/"):
                raise ValueError(f"exclude_paths: {p!r} is not a path starting with '/'")
        # "/metrics" also excludes "/metrics/", where a mounted app redirects to.
        self.exclude: FrozenSet[str] = frozenset(
            q for p in exclude_paths for q in (p.rstrip("/") or "/", p.rstrip("/") + "/"))
        self.max_series = max_series
        self._seen: Set[Tuple[str, str, str]] = set()
        self._warned = False
        self._lock = threading.Lock()

    def labels(self, method: str, code: str, operation: str) -> Tuple[str, str, str]:
        """The label values to record for one finished request."""
        if method not in METHODS:
            method = OTHER_METHOD
        key = (method, code, operation)
        if key in self._seen:
            return key
        with self._lock:
            if len(self._seen) < self.max_series:
                self._seen.add(key)
                return key
            if not self._warned:
                self._warned = True
                logger.warning(
                    "jobmetrics: more than %d HTTP label sets; new ones are recorded as "
                    "operation=%r (raise max_series, or give operation= a coarser name)",
                    self.max_series, OVERFLOW)
        return method, code, OVERFLOW
