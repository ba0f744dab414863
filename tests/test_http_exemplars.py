"""Exemplars: the active OpenTelemetry span's trace id on the duration's bucket."""

from __future__ import annotations

from typing import Any, List

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from starlette.testclient import TestClient

from jobmetrics import ASGIMiddleware, JobMetrics, WSGIMiddleware
from promcheck import promtool_check, scrape

tracer = TracerProvider().get_tracer("test")


def asgi_app_in_span(inner: Any) -> Any:
    """An outer middleware opening a span around the request, as OTel's ASGI one does."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        with tracer.start_as_current_span("req") as span:
            seen.append(format(span.get_span_context().trace_id, "032x"))
            await inner(scope, receive, send)
    return app


seen: List[str] = []


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_trace_id_becomes_the_bucket_exemplar() -> None:
    reg = CollectorRegistry()
    m = JobMetrics(registry=reg, process_collectors=False, http_duration="histogram")
    app = asgi_app_in_span(ASGIMiddleware(hello, metrics=m, operation=lambda s: "/hello"))
    seen.clear()
    TestClient(app).get("/hello")
    om = om_latest(reg).decode()
    assert f'# {{trace_id="{seen[0]}"}}' in om
    assert "trace_id" not in scrape(reg)  # the classic text format has no exemplars
    promtool_check(scrape(reg))


def test_wsgi_trace_id_read_while_the_app_runs() -> None:
    reg = CollectorRegistry()
    m = JobMetrics(registry=reg, process_collectors=False, http_duration="histogram")

    def app(environ: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = WSGIMiddleware(app, metrics=m, operation=lambda e: "/w")
    with tracer.start_as_current_span("req") as span:
        tid = format(span.get_span_context().trace_id, "032x")
        result = wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/w"}, lambda *a: None)
    result.close()  # type: ignore[attr-defined]  # outside the span, as a server does
    assert f'# {{trace_id="{tid}"}}' in om_latest(reg).decode()


def test_no_span_or_summary_means_no_exemplar() -> None:
    reg = CollectorRegistry()
    m = JobMetrics(registry=reg, process_collectors=False, http_duration="histogram")
    TestClient(ASGIMiddleware(hello, metrics=m)).get("/")  # no span active
    reg2 = CollectorRegistry()
    m2 = JobMetrics(registry=reg2, process_collectors=False)  # summary: nowhere to put one
    TestClient(asgi_app_in_span(ASGIMiddleware(hello, metrics=m2))).get("/")
    assert "trace_id" not in om_latest(reg).decode()
    assert "trace_id" not in om_latest(reg2).decode()
