"""Serving the metrics: WSGI and ASGI apps and a standalone HTTP server.

Built on prometheus_client's own exposition, so content negotiation (Prometheus text
or OpenMetrics), gzip and ``name[]=`` filtering behave exactly as there.
"""

from __future__ import annotations

import logging
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["make_asgi_app", "make_wsgi_app", "start_http_server"]

logger = logging.getLogger("jobmetrics")


def _resolve(metrics: Optional[JobMetrics]) -> JobMetrics:
    from .core import JobMetrics, default_metrics

    if metrics is None:
        return default_metrics()
    if not isinstance(metrics, JobMetrics):
        raise TypeError(f"metrics must be a JobMetrics, got {type(metrics).__name__}")
    return metrics


def make_wsgi_app(metrics: Optional[JobMetrics] = None) -> Callable[..., Any]:
    """A WSGI app that serves ``metrics``' registry (default: the default instance's)."""
    return prometheus_client.make_wsgi_app(_resolve(metrics).registry)


def make_asgi_app(metrics: Optional[JobMetrics] = None) -> Callable[..., Any]:
    """An ASGI app that serves ``metrics``' registry (default: the default instance's)."""
    return prometheus_client.make_asgi_app(_resolve(metrics).registry)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # A scrape every few seconds should not fill the service's stderr.
        pass


def _only_path(app: Callable[..., Any], path: str) -> Callable[..., Any]:
    def serve(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in (path, path.rstrip("/") or "/"):
            result: Iterable[bytes] = app(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"metrics are served at {path}\n".encode()]

    return serve


def start_http_server(
    port: int,
    addr: str = "0.0.0.0",
    metrics: Optional[JobMetrics] = None,
    path: Optional[str] = None,
) -> Optional[Tuple[WSGIServer, threading.Thread]]:
    """Serve the metrics at ``http://addr:port{path}`` from a daemon thread.

    ``path`` defaults to the instance's (``/metrics``); other paths answer 404. Port 0
    picks a free port: read it from ``server.server_port``. Returns ``(server, thread)``
    (``server.shutdown()`` stops it), or ``None`` without serving when the metrics are
    disabled, as Harbor's ``metric: {enabled: false}`` turns the endpoint off.
    """
    m = _resolve(metrics)
    if not m.enabled:
        logger.info("jobmetrics: metrics disabled, not serving on %s:%s", addr, port)
        return None
    app = _only_path(prometheus_client.make_wsgi_app(m.registry), path or m.path)
    server = make_server(addr, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="jobmetrics-http", daemon=True)
    thread.start()
    return server, thread
