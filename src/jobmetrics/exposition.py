"""Serving a registry: WSGI and ASGI apps and the one HTTP server of jobmetrics.

This module knows registries, not ``JobMetrics``: the facade (``core.py``) resolves the
default instance and calls down here, so nothing here imports it back.

Built on prometheus_client's own exposition, so content negotiation (Prometheus text
or OpenMetrics), gzip and ``name[]=`` filtering behave exactly as there; a scraper whose
``Accept`` header prefers the Prometheus protobuf exposition (Prometheus with native
histograms on) gets that instead (:mod:`jobmetrics.protobuf`), gzipped when it accepts
gzip, filtered by ``name[]=`` too.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry
from typing_extensions import TypedDict

from ._webconfig import WebConfigSource
from .protobuf import CONTENT_TYPE, encode, wants_protobuf

__all__ = ["DEFAULT_TIMEOUT", "ServeOptions", "asgi_app", "check_port", "metrics_app",
           "negotiating_wsgi_app", "serve_metrics"]

logger = logging.getLogger("jobmetrics")



class ServeOptions(TypedDict, total=False):
    """Keyword options of ``start_http_server`` beyond the address."""

    web_config_file: Optional[str]
    timeout: Optional[float]


WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def protobuf_body(registry: CollectorRegistry, query: str, accept_encoding: str
                  ) -> Tuple[bytes, List[Tuple[str, str]]]:
    """The protobuf exposition of ``registry`` for a request's query string and
    ``Accept-Encoding``: body and headers. ``name[]=`` keeps the families with the name
    or a sample of the name (whole families: protobuf has no partial histogram)."""
    wanted = set(parse_qs(query).get("name[]", ()))
    metrics = registry.collect()
    if wanted:
        metrics = (m for m in metrics
                   if m.name in wanted or any(s.name in wanted for s in m.samples))
    body = encode(metrics)
    headers = [("Content-Type", CONTENT_TYPE)]
    if "gzip" in accept_encoding:
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers


def negotiating_wsgi_app(registry: CollectorRegistry) -> WSGIApp:
    """prometheus_client's WSGI app for ``registry``, answering in protobuf when the
    scraper prefers it."""
    text = prometheus_client.make_wsgi_app(registry)

    def serve(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not wants_protobuf(environ.get("HTTP_ACCEPT", "")):
            return text(environ, start_response)  # type: ignore[no-any-return]
        body, headers = protobuf_body(registry, environ.get("QUERY_STRING", ""),
                                      environ.get("HTTP_ACCEPT_ENCODING", ""))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return serve




class _ASGIApp:
    """prometheus_client's ASGI app as an object, not a function: Starlette's ``Route``
    treats a function as ``f(request) -> response`` and an object as an ASGI app, so
    ``Route("/metrics", m.make_asgi_app())`` serves ``/metrics`` itself (a ``Mount``
    answers it with a 307 to ``/metrics/``)."""

    __slots__ = ("_app", "_registry")

    def __init__(self, app: Callable[..., Any], registry: CollectorRegistry) -> None:
        self._app = app
        self._registry = registry

    async def __call__(self, scope: Dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope.get("type") == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", ())}
            if wants_protobuf(headers.get("accept", "")):
                body, out = protobuf_body(
                    self._registry, scope.get("query_string", b"").decode("latin-1"),
                    headers.get("accept-encoding", ""))
                out.append(("Content-Length", str(len(body))))
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(k.lower().encode(), v.encode()) for k, v in out]})
                await send({"type": "http.response.body", "body": body})
                return
        await self._app(scope, receive, send)


def asgi_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """An ASGI app serving ``registry``: text, OpenMetrics or protobuf as the scraper's
    ``Accept`` header asks."""
    return _ASGIApp(prometheus_client.make_asgi_app(registry), registry)


#: Seconds a connection may sit idle (before its request, or mid-read or mid-write)
#: before the server closes it: an idle client must not hold a thread forever.
DEFAULT_TIMEOUT = 30.0


class _Server(ThreadingMixIn, WSGIServer):
    """A threading WSGI server with a per-connection timeout and optional TLS.

    TLS is negotiated in the connection's own thread, under its timeout, so a client that
    connects and says nothing cannot stall ``accept()`` for everyone else.
    """

    daemon_threads = True
    request_timeout: Optional[float] = DEFAULT_TIMEOUT
    web: Optional[WebConfigSource] = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        web = self.web.current() if self.web is not None else None
        if web is None or web.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.request_timeout)
        try:
            tls = web.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:
            logger.debug("jobmetrics: TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-response is not the service's problem: no traceback
        # on the service's stderr, as socketserver would print.
        logger.debug("jobmetrics: error serving %s", client_address, exc_info=True)


class _Handler(WSGIRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def handle(self) -> None:
        try:
            super().handle()
        except (socket.timeout, TimeoutError, ConnectionError):
            # Idle past the timeout, or the client left: drop the connection quietly.
            # (socket.timeout is TimeoutError only from Python 3.10 on.)
            self.close_connection = True

    def get_environ(self) -> Dict[str, Any]:
        environ: Dict[str, Any] = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"
            environ["wsgi.url_scheme"] = "https"
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        # A scrape every few seconds should not fill the service's stderr.
        pass


def _only_paths(app: WSGIApp, paths: Sequence[str]) -> WSGIApp:
    allowed = set(paths) | {p.rstrip("/") or "/" for p in paths}

    def serve(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in allowed:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"metrics are served at {paths[0]}\n".encode()]

    return serve


def _guarded(app: WSGIApp, web: WebConfigSource) -> WSGIApp:
    def serve(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        config = web.current()
        headers = list(config.headers)
        if not config.check(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="metrics", charset="UTF-8"'),
                *headers])
            return [b"Unauthorized\n"]
        if not headers:
            return app(environ, start_response)

        def with_headers(status: str, response_headers: List[Tuple[str, str]],
                         exc_info: Any = None) -> Any:
            return start_response(status, response_headers + headers, exc_info)

        return app(environ, with_headers)

    return serve


def check_port(port: object, addr: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__} {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a str, got {type(addr).__name__}")


def display(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _serve(
    app: WSGIApp,
    port: int,
    addr: str,
    *,
    web_config_file: Optional[str] = None,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    name: str = "jobmetrics-http",
) -> Tuple[_Server, threading.Thread]:
    """Serve ``app`` on ``addr:port`` from a daemon thread: the one HTTP server of
    jobmetrics (``start_http_server``, the exporter, the demo).

    ``addr`` may be IPv4, IPv6 (``::1``, ``::``) or a host name. A port that cannot be
    bound raises ``OSError`` (its errno kept) naming ``addr:port``.
    """
    check_port(port, addr)
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    web = WebConfigSource(web_config_file) if web_config_file is not None else None
    if web is not None:
        app = _guarded(app, web)
    where = display(addr, port)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        server_class = type("_Server", (_Server,), {"address_family": family,
                                                    "request_timeout": timeout, "web": web})
        server = server_class(sockaddr[:2], _Handler)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from None
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server, thread


def metrics_app(registry: CollectorRegistry, paths: Sequence[str]) -> WSGIApp:
    """prometheus_client's exposition of ``registry`` (or the protobuf one, when the
    scraper prefers it) at ``paths``, 404 elsewhere."""
    return _only_paths(negotiating_wsgi_app(registry), paths)


def serve_metrics(
    registry: CollectorRegistry, port: int, addr: str, path: str, *,
    web_config_file: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT,
) -> Tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at ``http://addr:port{path}`` (404 elsewhere) from a daemon
    thread; see :func:`jobmetrics.start_http_server`."""
    return _serve(metrics_app(registry, (path,)), port, addr,
                  web_config_file=web_config_file, timeout=timeout)
