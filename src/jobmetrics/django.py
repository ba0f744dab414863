"""Django: name each request's ``operation`` after the route it resolved to.

Add ``"jobmetrics.django.RouteMiddleware"`` to ``MIDDLEWARE``; wrap the WSGI or ASGI
application with :class:`~jobmetrics.WSGIMiddleware` / :class:`~jobmetrics.ASGIMiddleware`.
The route is Django's pattern (``"jobs/<int:job_id>/"``), never the requested path.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["RouteMiddleware"]

KEY = "jobmetrics.operation"


class RouteMiddleware:
    """Leaves ``request.resolver_match.route`` where the jobmetrics middleware reads it."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any,
                     view_kwargs: Any) -> None:
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        if isinstance(route, str):
            # Django routes have no leading slash; paths and Flask rules do.
            route = "/" + route.lstrip("^")
            scope = getattr(request, "scope", None)  # ASGI
            target = scope if isinstance(scope, dict) else request.environ
            target[KEY] = route
