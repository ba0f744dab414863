"""Per-request overhead of ASGIMiddleware / WSGIMiddleware against the bare app, the peers
(starlette-exporter, prometheus-fastapi-instrumentator, prometheus-flask-exporter) and a
minimal hand-written prometheus_client middleware emitting the same three families.

Each app is driven in-process with a prepared scope/environ (no network); every overhead
is measured against its own bare app in the same run (best of N).

Run: .venv/bin/python bench/bench_http.py   (needs the [bench] extra for the peers)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jobmetrics import ASGIMiddleware, JobMetrics, WSGIMiddleware

sys.path.insert(0, os.path.dirname(__file__))
from timing import us

N_ASGI, N_WSGI, REPEAT = 5_000, 5_000, 7

# ---------------------------------------------------------------- hand-written minimum


def _families(r: CollectorRegistry) -> Tuple[Gauge, Counter, Histogram]:
    return (Gauge("h_inflight", "d", registry=r),
            Counter("h_request", "d", ["method", "code", "operation"], registry=r),
            Histogram("h_duration", "d", ["method", "operation"], registry=r))


class HandASGI:
    """The least a user writes: pure ASGI, route template after the app ran."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inflight, self.total, self.duration = _families(CollectorRegistry())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.inflight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            op = getattr(route, "path", "unknown")
            method = scope["method"]
            self.total.labels(method, str(status[0]), op).inc()
            self.duration.labels(method, op).observe(time.perf_counter() - start)
            self.inflight.dec()


class HandWSGI:
    """The least a user writes for WSGI: wraps start_response, records at close()."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inflight, self.total, self.duration = _families(CollectorRegistry())

    def __call__(self, environ: Any, start_response: Any) -> Any:
        self.inflight.inc()
        start = time.perf_counter()
        state: List[Any] = ["500", "unknown"]

        def sr(status: str, headers: Any, exc_info: Any = None) -> Any:
            req = environ.get("werkzeug.request")
            rule = getattr(req, "url_rule", None)
            state[:] = [status[:3], rule.rule if rule is not None else "unknown"]
            return start_response(status, headers, exc_info)

        body = self.app(environ, sr)
        try:
            return list(body)
        finally:
            if hasattr(body, "close"):
                body.close()
            method = environ["REQUEST_METHOD"]
            self.total.labels(method, state[0], state[1]).inc()
            self.duration.labels(method, state[1]).observe(time.perf_counter() - start)
            self.inflight.dec()


# ---------------------------------------------------------------- ASGI


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def job(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/jobs/{job_id:int}", job)])


def fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/jobs/{job_id}", response_class=PlainTextResponse)
    async def job(job_id: int) -> str:
        return "ok"

    return app


SCOPE: Dict[str, Any] = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
    "scheme": "http", "path": "/jobs/42", "raw_path": b"/jobs/42", "root_path": "",
    "query_string": b"", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
}


async def _receive() -> Dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def time_asgi(apps: Dict[str, Any]) -> Dict[str, float]:
    async def run() -> Dict[str, float]:
        best = {k: float("inf") for k in apps}
        for _ in range(REPEAT):
            for name, app in apps.items():  # interleaved: drift hits all alike
                t0 = time.perf_counter()
                for _ in range(N_ASGI):
                    await app(dict(SCOPE), _receive, _send)
                best[name] = min(best[name], (time.perf_counter() - t0) / N_ASGI)
        return best

    return asyncio.run(run())


def asgi_apps() -> Dict[str, Any]:
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware

    apps: Dict[str, Any] = {"starlette bare": starlette_app()}
    a = starlette_app()
    a.add_middleware(ASGIMiddleware, metrics=JobMetrics("s", registry=CollectorRegistry()))
    apps["starlette + jobmetrics"] = a
    a = starlette_app()
    a.add_middleware(HandASGI)
    apps["starlette + hand-written"] = a
    a = starlette_app()
    a.add_middleware(PrometheusMiddleware)
    apps["starlette + starlette-exporter"] = a
    apps["fastapi bare"] = fastapi_app()
    a = fastapi_app()
    a.add_middleware(ASGIMiddleware, metrics=JobMetrics("f", registry=CollectorRegistry()))
    apps["fastapi + jobmetrics"] = a
    a = fastapi_app()
    Instrumentator(registry=CollectorRegistry()).instrument(a)
    apps["fastapi + instrumentator"] = a
    return apps


# ---------------------------------------------------------------- WSGI


def flask_app() -> Any:
    import flask

    app = flask.Flask("bench")

    @app.route("/jobs/<int:job_id>")
    def job(job_id: int) -> str:
        return "ok"

    return app


ENVIRON: Dict[str, Any] = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/jobs/42", "SCRIPT_NAME": "", "QUERY_STRING": "",
    "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
    "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": False,
    "wsgi.multiprocess": False, "wsgi.run_once": False, "HTTP_HOST": "bench",
}


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., None]:
    return lambda data: None


def _drive(app: Any) -> None:
    body = app(dict(ENVIRON), _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()


def time_wsgi(apps: Dict[str, Any]) -> Dict[str, float]:
    best = {k: float("inf") for k in apps}
    for _ in range(REPEAT):
        for name, app in apps.items():
            t0 = time.perf_counter()
            for _ in range(N_WSGI):
                _drive(app)
            best[name] = min(best[name], (time.perf_counter() - t0) / N_WSGI)
    return best


def wsgi_apps() -> Dict[str, Any]:
    from prometheus_flask_exporter import PrometheusMetrics

    apps: Dict[str, Any] = {"flask bare": flask_app()}
    a = flask_app()
    a.wsgi_app = WSGIMiddleware(a.wsgi_app,  # type: ignore[method-assign]
                                metrics=JobMetrics("w", registry=CollectorRegistry()))
    apps["flask + jobmetrics"] = a
    a = flask_app()
    a.wsgi_app = HandWSGI(a.wsgi_app)  # type: ignore[method-assign]
    apps["flask + hand-written"] = a
    a = flask_app()
    PrometheusMetrics(a, registry=CollectorRegistry(), path=None)
    apps["flask + prometheus-flask-exporter"] = a
    return apps


def report(times: Dict[str, float], bare: str) -> None:
    base = times[bare]
    for name, t in times.items():
        if name == bare:
            print(f"  {name:38s} {us(t):>9s} us/request")
        else:
            print(f"  {name:38s} {us(t):>9s} us/request  overhead +{us(t - base)} us")


def main() -> None:
    print(f"Python {sys.version.split()[0]}, best of {REPEAT} x {N_ASGI} requests")
    a = time_asgi(asgi_apps())
    print("ASGI (Starlette)")
    report({k: v for k, v in a.items() if k.startswith("starlette")}, "starlette bare")
    print("ASGI (FastAPI)")
    report({k: v for k, v in a.items() if k.startswith("fastapi")}, "fastapi bare")
    w = time_wsgi(wsgi_apps())
    print("WSGI (Flask)")
    report(w, "flask bare")
    ours = a["starlette + jobmetrics"] - a["starlette bare"]
    hand = a["starlette + hand-written"] - a["starlette bare"]
    print(f"ratio ASGI jobmetrics / hand-written overhead: {ours / hand:.2f}")
    ours = w["flask + jobmetrics"] - w["flask bare"]
    hand = w["flask + hand-written"] - w["flask bare"]
    print(f"ratio WSGI jobmetrics / hand-written overhead: {ours / hand:.2f}")


if __name__ == "__main__":
    main()
