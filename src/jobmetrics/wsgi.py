"""``WSGIMiddleware``: the ``http_*`` families for any WSGI app (Flask, Django, ...)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from . import _errors
from .core import resolve_metrics
from .http_common import RECORDING, UNKNOWN, LabelPolicy, current_trace_id, exemplar_series
from .state import HttpState

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["WSGIMiddleware", "flask_operation"]

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


# Where the rule of a Flask view that raised is kept (see _remember_flask_rule).
_FLASK_RULE = "jobmetrics.flask_rule"
_flask_watched = False


def flask_operation(environ: Environ) -> Optional[str]:
    """The URL rule Flask (or any werkzeug app) matched: werkzeug keeps the request
    object in ``environ["werkzeug.request"]``, and Flask sets its ``url_rule``."""
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    value = getattr(rule, "rule", None)
    if value is None:
        value = environ.get(_FLASK_RULE)
    return value if isinstance(value, str) else None


def _remember_flask_rule(sender: object, **extra: object) -> None:
    # With PROPAGATE_EXCEPTIONS (also TESTING=True) Flask re-raises a view's exception
    # after clearing environ["werkzeug.request"], so the rule is gone by the time the
    # exception reaches the middleware; got_request_exception fires just before, while
    # the request is still active.
    try:
        request = sys.modules["flask"].request
        rule = getattr(request.url_rule, "rule", None)
        if isinstance(rule, str):
            request.environ[_FLASK_RULE] = rule
    except Exception as exc:
        _errors.report("WSGIMiddleware Flask rule", exc)


def _watch_flask() -> None:
    # Only when the app already imported Flask: jobmetrics never imports it itself.
    global _flask_watched
    flask = sys.modules.get("flask")
    if _flask_watched or flask is None:
        return
    signal = getattr(flask, "got_request_exception", None)
    if signal is not None:
        signal.connect(_remember_flask_rule, weak=False)
        _flask_watched = True


class _Response:
    """The app's response iterable; the request ends after its last byte.

    PEP 3333 has every server call ``close()`` once it is done with the response, also
    when the client went away or the iteration raised. Not every server does: werkzeug's
    skips it when the client resets the connection while it drains the request. So the
    request also ends when the server asks for the item after the last one (by then it
    has written every byte), whichever comes first, exactly once. ``__del__`` covers a
    server that neither exhausts nor closes the iterable.
    """

    __slots__ = ("_finish", "_inner")

    def __init__(self, inner: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._inner = inner
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner
        self._finish()

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def __del__(self) -> None:
        self._finish()


class _SizedResponse(_Response):
    """A response whose iterable has a length (a list): servers read ``len()`` to set
    ``Content-Length`` (wsgiref does for one block), so it is passed through."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]


def _wrap(result: Iterable[bytes], environ: Environ, finish: Callable[[], None]
          ) -> Iterable[bytes]:
    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
        # The server sends a file wrapper with sendfile() when it gets its own object
        # back, so that object is returned, with the request ending at its close()
        # (PEP 3333: the server calls it when done, also after sendfile).
        inner_close = getattr(result, "close", None)

        def close() -> None:
            try:
                if inner_close is not None:
                    inner_close()
            finally:
                finish()

        try:
            result.close = close  # type: ignore[attr-defined]
            return result
        except (AttributeError, TypeError):
            pass  # a wrapper with __slots__: wrap it like any iterable
    if hasattr(result, "__len__"):
        return _SizedResponse(result, finish)
    return _Response(result, finish)


class WSGIMiddleware:
    """Counts, times and tracks in flight every request of a WSGI app.

    ``flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, metrics=m)``, or wrap
    Django's ``application``.

    Args:
        app: the WSGI app.
        metrics: a :class:`~jobmetrics.JobMetrics` (default: the process-wide one).
        operation: ``f(environ) -> str | None``, called when the app starts its
            response (or raises), for frameworks whose routes jobmetrics does not read
            itself. Flask's URL rules
            are read without it, and Django's with
            :class:`jobmetrics.django.RouteMiddleware`.
        exclude_paths: paths not measured at all (default: the metrics path).
        max_series: the series budget (see :class:`~jobmetrics.http_common.LabelPolicy`).

    Values: ``code`` is the status the app gave ``start_response``; an exception before
    that is ``500`` (and re-raised unchanged). The duration ends when the server closes
    the response, after its last byte, so streaming responses are timed whole.
    """

    def __init__(
        self,
        app: WSGIApp,
        metrics: Optional[JobMetrics] = None,
        *,
        operation: Optional[Callable[[Environ], Optional[str]]] = None,
        exclude_paths: Optional[Iterable[str]] = None,
        max_series: int = 1000,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be the WSGI application to wrap (a callable), "
                            f"got {type(app).__name__}")
        self.app = app
        self.metrics = resolve_metrics(metrics)
        if operation is not None and not callable(operation):
            raise TypeError("operation must be a callable taking the environ")
        self._operation = operation
        _watch_flask()
        self._policy = LabelPolicy(self.metrics, exclude_paths, max_series)
        self._http: Optional[HttpState] = self.metrics.http
        # Set only when exemplars can be recorded (see docs/http.md); else no cost.
        self._exemplars = exemplar_series(self.metrics)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        http = self._http
        if (http is None or environ.get("PATH_INFO") in self._policy.exclude
                or environ.get(RECORDING) is http):
            # Off, excluded, or an outer WSGIMiddleware on the same families records it.
            return self.app(environ, start_response)
        environ[RECORDING] = http
        start = http.begin()
        # [code, operation]: both read when the app calls start_response, while the
        # framework's request is still alive (Flask drops it from the environ as soon as
        # the app returns).
        state: List[Optional[str]] = []

        def resolve() -> Optional[str]:
            try:
                return (self._operation or flask_operation)(environ) or environ.get(
                    "jobmetrics.operation")
            except Exception as exc:  # a user's operation() must not break the request
                _errors.report("WSGIMiddleware operation", exc)
                return None

        # The trace id is read while the app runs, where its span is active; the server
        # closes the response (where the request is recorded) outside of it.
        trace: List[Optional[str]] = [None]

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            state[:] = [code[:3], resolve()]
            if self._exemplars is not None:
                trace[0] = current_trace_id()
            return start_response(code, headers, exc_info)

        finished = False

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            environ.pop(RECORDING, None)  # an environ used again is another request
            code, op = state if state else ("500", resolve())
            labels = self._policy.labels(environ.get("REQUEST_METHOD", "GET"), code or "500",
                                         op or UNKNOWN)
            ex = self._exemplars
            if ex is None:
                http.end(*labels, start)
            else:
                ex.end(*labels, start, trace[0])

        try:
            result = self.app(environ, recording_start_response)
        except BaseException:
            # The server answers 500 for an app that raised.
            state[:] = ["500", state[1] if state else resolve()]
            if self._exemplars is not None and trace[0] is None:
                trace[0] = current_trace_id()
            finish()
            raise
        return _wrap(result, environ, finish)
