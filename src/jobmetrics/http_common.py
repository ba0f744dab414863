"""What the ASGI and WSGI middleware share: labels kept bounded, excluded paths."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, FrozenSet, Optional, Tuple

from .labels import OVERFLOW  # ``operation`` of new label sets once the budget is spent
from .settings import check_int
from .state import HttpState, http_budget

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["METHODS", "OTHER_METHOD", "OVERFLOW", "RECORDING", "UNKNOWN", "LabelPolicy"]

#: Methods kept as they are; any other becomes ``OTHER_METHOD`` (a client can send any).
METHODS: FrozenSet[str] = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
OTHER_METHOD = "other"
#: ``operation`` of a request that matched no route: never its raw path.
UNKNOWN = "unknown"
#: The scope/environ key under which a middleware leaves the ``m.http`` it records a
#: request into: a second middleware on the same families (one app wrapped twice) lets
#: the request through uncounted, so it is recorded once.
RECORDING = "jobmetrics.recording"


class LabelPolicy:
    """Method folding, excluded paths and the series budget of one middleware.

    The budget counts distinct ``(method, code, operation)`` label sets recorded into
    ``metrics.http`` (shared by every middleware on the same families; the limit is the
    largest ``max_series`` any of them gave); past it a new one is recorded with
    ``operation="overflow"`` (method and code are bounded already), and a warning is
    logged once. It is applied before ``http.end()``, so both the in-process and the
    multi-process mode get it; in multi-process mode it holds for the directory's merged
    output (:class:`~jobmetrics.labels.Budget`).
    """

    __slots__ = ("_budget", "exclude", "max_series")

    def __init__(self, metrics: JobMetrics, exclude_paths: Optional[Iterable[str]],
                 max_series: int) -> None:
        check_int("max_series", max_series, 1)
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
        http = metrics.http
        budget = http_budget(None) if http is None else http.budget
        # The largest limit any middleware on these families asked for.
        budget.limit = max(budget.limit, max_series)
        self._budget = budget

    def labels(self, method: str, code: str, operation: str) -> Tuple[str, str, str]:
        """The label values to record for one finished request."""
        if method not in METHODS:
            method = OTHER_METHOD
        key = (method, code, operation)
        budget = self._budget
        if key in budget.seen or budget.admits(key):
            return key
        return method, code, OVERFLOW


try:  # optional: exemplars need OpenTelemetry's API
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the environment
    _otel_trace = None  # type: ignore[assignment]


def exemplar_series(metrics: JobMetrics) -> Optional[HttpState]:
    """``metrics.http`` when exemplars can be recorded: OpenTelemetry's API installed,
    histogram durations (OpenMetrics allows exemplars on buckets, not on summary
    quantiles) and the in-process mode; else ``None`` and the middleware skips the work."""
    if (_otel_trace is None or metrics.settings.http_duration not in ("histogram", "native")
            or metrics.settings.multiprocess_dir):
        return None
    return metrics.http


def current_trace_id() -> Optional[str]:
    """The active OpenTelemetry span's trace id (32 hex digits), or ``None``."""
    if _otel_trace is None:
        return None
    ctx = _otel_trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
