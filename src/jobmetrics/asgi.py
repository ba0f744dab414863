"""``ASGIMiddleware``: the ``http_*`` families for any ASGI app (Starlette, FastAPI, ...).

A pure ASGI middleware, as Starlette's own: it wraps ``send`` and nothing else, so
streaming, background tasks and ``contextvars`` behave exactly as without it. Only
``http`` scopes are measured; ``websocket`` and ``lifespan`` pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from . import _errors
from .core import resolve_metrics
from .http_common import RECORDING, UNKNOWN, LabelPolicy, current_trace_id, exemplar_series

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["ASGIMiddleware", "starlette_operation"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Recorded as ``code`` when the client went away before any response was sent (the
#: request was cancelled): nginx's "client closed request".
CLIENT_CLOSED = "499"


def starlette_operation(scope: Scope, root_path: str) -> Optional[str]:
    """The route template Starlette/FastAPI matched, with the templates of any mounts.

    Starlette's router leaves the matched route in ``scope["route"]`` and the outermost
    router in ``scope["router"]``; the mounts between them are found in the routing tree,
    so ``Mount("/tenants/{tenant}")`` gives ``/tenants/{tenant}/...``, never the text the
    client requested. ``root_path`` is the scope's value before the app.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    if hasattr(route, "endpoint"):
        leaf = path
    elif getattr(route, "routes", None):
        return None  # a mounted router that matched nothing: a 404
    else:
        # A mounted app without routes (static files, another framework) serves
        # everything under its prefix.
        leaf = path + "/{path}"
    prefix = _mount_prefix(scope.get("router"), route)
    if prefix is None:
        # Not found in the tree: only an unmounted route is safe to name (the mounts'
        # prefix in root_path is the requested text).
        return leaf if scope.get("root_path", "") == root_path else None
    return prefix + leaf


_MAX_DEPTH = 16
# id(route) -> (router, route, prefix): routes are fixed once an app runs, so the tree
# is walked once per route; the objects are held so their ids stay theirs.
_prefixes: Dict[int, Tuple[object, object, Optional[str]]] = {}


def _mount_prefix(router: object, route: object) -> Optional[str]:
    """The joined path templates of the mounts from ``router`` down to ``route``."""
    if router is None:
        return None
    hit = _prefixes.get(id(route))
    if hit is not None and hit[0] is router and hit[1] is route:
        return hit[2]
    found = _find(getattr(router, "routes", None), route, "", 0)
    if len(_prefixes) > 10_000:  # routes made per request: do not grow without bound
        _prefixes.clear()
    _prefixes[id(route)] = (router, route, found)
    return found


def _find(routes: object, target: object, prefix: str, depth: int) -> Optional[str]:
    if not isinstance(routes, (list, tuple)) or depth > _MAX_DEPTH:
        return None
    for r in routes:
        if r is target:
            return prefix
    for r in routes:
        sub = getattr(r, "routes", None)
        if sub:
            path = getattr(r, "path", "")  # a Host has none: it adds nothing
            found = _find(sub, target, prefix + (path if isinstance(path, str) else ""),
                          depth + 1)
            if found is not None:
                return found
    return None


class ASGIMiddleware:
    """Counts, times and tracks in flight every HTTP request of an ASGI app.

    ``app.add_middleware(ASGIMiddleware, metrics=m)`` (Starlette, FastAPI) or
    ``ASGIMiddleware(app, metrics=m)``.

    Args:
        app: the ASGI app.
        metrics: a :class:`~jobmetrics.JobMetrics` (default: the process-wide one).
        operation: ``f(scope) -> str | None``, called after the app ran, for frameworks
            whose routes jobmetrics does not read itself; ``None`` means no route.
            Starlette and FastAPI routes (mounts and routers included) and Django's (with
            :class:`jobmetrics.django.RouteMiddleware`) are read without it.
        exclude_paths: paths not measured at all (default: the metrics path).
        max_series: the series budget (see :class:`~jobmetrics.http_common.LabelPolicy`).

    Values: ``code`` is the status sent; an exception before the response started is
    ``500`` (and re-raised unchanged); a request cancelled before any response (client
    gone) is ``499``. The duration runs to the last body byte sent.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Optional[JobMetrics] = None,
        *,
        operation: Optional[Callable[[Scope], Optional[str]]] = None,
        exclude_paths: Optional[Iterable[str]] = None,
        max_series: int = 1000,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be the ASGI application to wrap (a callable), "
                            f"got {type(app).__name__}")
        self.app = app
        self.metrics = resolve_metrics(metrics)
        if operation is not None and not callable(operation):
            raise TypeError("operation must be a callable taking the scope")
        self._operation = operation
        self._policy = LabelPolicy(self.metrics, exclude_paths, max_series)
        self._http = self.metrics.http
        # Set only when exemplars can be recorded (see docs/http.md); else no cost.
        self._exemplars = exemplar_series(self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = self._http
        if http is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        path = scope.get("path", "")
        # Servers run with a root path (uvicorn --root-path) include it in ``path``;
        # excluded paths are given as the app sees them, without it.
        if root_path and path.startswith(root_path):
            path = path[len(root_path):]
        if path in self._policy.exclude or scope.get(RECORDING) is http:
            # Excluded, or an outer ASGIMiddleware on the same families records it.
            await self.app(scope, receive, send)
            return
        scope[RECORDING] = http
        start = http.begin()
        status: Optional[int] = None
        finished = False

        def finish(code: str) -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            try:
                if self._operation is not None:
                    op = self._operation(scope)
                else:
                    op = starlette_operation(scope, root_path) or scope.get(
                        "jobmetrics.operation")
            except Exception as exc:  # a user's operation() must not break the request
                _errors.report("ASGIMiddleware operation", exc)
                op = None
            labels = self._policy.labels(scope.get("method", "GET"), code, op or UNKNOWN)
            ex = self._exemplars
            if ex is None:
                http.end(*labels, start)
            else:  # still inside the request's context, where its span is active
                ex.end(*labels, start, current_trace_id())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finish(str(status))

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            finish(CLIENT_CLOSED if status is None else str(status))
            raise
        except BaseException:
            finish("500" if status is None else str(status))
            raise
        finally:
            scope.pop(RECORDING, None)  # a scope used again is another request
        # A response that ended without a final body message (or none at all).
        finish(str(status) if status is not None else "500")

