"""Serving: WSGI and ASGI apps, the standalone server, and a promtool-clean scrape."""

from __future__ import annotations

import asyncio
import gzip
import math
import urllib.error
import urllib.request
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobmetrics import JobMetrics, QuantileSummary, Stopped
from promcheck import promtool_check, samples, scrape


def populate(m: JobMetrics) -> list[Any]:
    """Put a value in every family; returns objects to keep alive (the queue)."""
    import queue

    @m.task("replication")
    def replicate(i: int) -> None:
        if i % 3 == 1:
            raise RuntimeError
        if i % 3 == 2:
            raise Stopped

    for i in range(9):
        try:
            replicate(i)
        except (RuntimeError, Stopped):
            pass
    http = m.http
    assert http is not None
    for code in ("200", "200", "404"):
        http.end("GET", code, "/jobs/{id}" if code == "200" else "unknown", http.begin())
    series = m.task_series("gc")
    assert series is not None
    series.add_pending(2)
    q: queue.Queue[int] = queue.Queue()
    q.put(1)
    sizes = m.queue_sizes
    assert sizes is not None
    sizes.register("default", q, lambda q: q.qsize())
    return [q]


def test_every_family_populated_passes_promtool_and_parses(registry) -> None:
    m = JobMetrics(registry=registry, node="n1", pool="p", workers=2)
    keep = populate(m)
    text = scrape(registry)
    promtool_check(text)
    got = samples(text)
    p = "harbor_jobservice_"
    assert got[(p + "task_total", (("status", "fail"), ("type", "replication")))] == 3.0
    assert got[(p + "task_success_rate", (("type", "replication"),))] == 0.5
    assert got[(p + "pending_task", (("type", "gc"),))] == 2.0
    assert got[(p + "queue_size", (("queue", "default"),))] == 1.0
    assert got[(p + "http_request_total",
                (("code", "200"), ("method", "GET"), ("operation", "/jobs/{id}")))] == 2.0
    assert got[(p + "http_request_duration_seconds_count",
                (("method", "GET"), ("operation", "unknown")))] == 1.0
    assert got[(p + "http_inflight_requests", ())] == 0.0
    assert got[(p + "info", (("node", "n1"), ("pool", "p"), ("workers", "2")))] == 1.0
    q99 = got[(p + "http_request_duration_seconds",
               (("method", "GET"), ("operation", "unknown"), ("quantile", "0.99")))]
    assert q99 >= 0 and not math.isnan(q99)
    assert keep


def test_histogram_mode_passes_promtool(registry) -> None:
    m = JobMetrics(registry=registry, task_duration="histogram", http_duration="histogram",
                   process_collectors=False)
    keep = populate(m)
    promtool_check(scrape(registry))
    assert keep


def test_openmetrics_exposition_parses(registry) -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    m = JobMetrics(registry=registry, process_collectors=False)
    keep = populate(m)
    text = om_latest(registry).decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in om_parse(text)}
    assert {"harbor_jobservice_task", "harbor_jobservice_http_request",
            "harbor_jobservice_task_process_time_seconds", "harbor_jobservice"} <= names
    assert keep


def test_quantile_summary_standalone(registry) -> None:
    s = QuantileSummary("job_wait_seconds", "Wait.", ["queue"], registry=registry,
                        quantiles=(0.5, 0.9))
    for i in range(1, 101):
        s.labels("a").observe(i / 100)
    s.labels(queue="b").observe(2.0)
    text = scrape(registry)
    promtool_check(text)
    got = samples(text)
    assert got[("job_wait_seconds_count", (("queue", "a"),))] == 100.0
    assert got[("job_wait_seconds_sum", (("queue", "a"),))] == pytest.approx(50.5)
    assert got[("job_wait_seconds", (("quantile", "0.5"), ("queue", "a")))] == pytest.approx(
        0.5, rel=0.01)
    assert got[("job_wait_seconds", (("quantile", "0.9"), ("queue", "a")))] == pytest.approx(
        0.9, rel=0.01)
    assert got[("job_wait_seconds", (("quantile", "0.5"), ("queue", "b")))] == pytest.approx(
        2.0, rel=0.01)


def test_quantile_summary_errors(registry) -> None:
    with pytest.raises(ValueError, match="quantile"):
        QuantileSummary("x", "d", ["quantile"], registry=None)
    with pytest.raises(ValueError, match="name"):
        QuantileSummary("bad-name", "d", registry=None)
    with pytest.raises(ValueError, match="quantiles"):
        QuantileSummary("x", "d", registry=None, quantiles=(2.0,))
    s = QuantileSummary("x", "d", ["a"], registry=None)
    with pytest.raises(ValueError, match="has labels"):
        s.observe(1.0)
    with pytest.raises(ValueError, match="label values"):
        s.labels("1", "2")
    u = QuantileSummary("y", "d", registry=None)
    u.observe(3.0)
    with pytest.raises(ValueError, match="no labels"):
        u.labels("z")


def _call_wsgi(
    app: Any, path: str, headers: dict[str, str] | None = None
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    environ.update(headers or {})
    status: list[Any] = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.extend([s, dict(h)])))
    return status[0], status[1], body


def test_make_wsgi_app_negotiates_and_compresses(m: JobMetrics) -> None:
    with m.track_task("gc"):
        pass
    app = m.make_wsgi_app()
    status, headers, body = _call_wsgi(app, "/metrics")
    assert status.startswith("200")
    assert "harbor_jobservice_task_total" in body.decode()
    _, headers, body = _call_wsgi(app, "/metrics", {
        "HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0",
        "HTTP_ACCEPT_ENCODING": "gzip",
    })
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().endswith("# EOF\n")


def test_make_asgi_app(m: JobMetrics) -> None:
    with m.track_task("gc"):
        pass
    app = m.make_asgi_app()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": []}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    body = b"".join(msg.get("body", b"") for msg in sent[1:])
    assert b'harbor_jobservice_task_total{status="success",type="gc"} 1.0' in body


def test_start_http_server_serves_the_path_only(m: JobMetrics) -> None:
    with m.track_task("gc"):
        pass
    served = m.start_http_server(0, "127.0.0.1")
    assert served is not None
    server, thread = served
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert resp.status == 200
        families = {f.name for f in text_string_to_metric_families(text)}
        assert "harbor_jobservice_task" in families
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
    thread.join(5)
    assert not thread.is_alive()


def test_module_level_start_http_server_with_path(m: JobMetrics) -> None:
    from jobmetrics import start_http_server

    served = start_http_server(0, addr="127.0.0.1", metrics=m, path="/prom")
    assert served is not None
    server, _ = served
    try:
        url = f"http://127.0.0.1:{server.server_port}/prom"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"harbor_jobservice_info" in resp.read()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(TypeError, match="metrics"):
        start_http_server(0, metrics="m")  # type: ignore[arg-type]
