"""Each framework example, run as it is under its real server, counted right."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from promcheck import promtool_check, samples
from servers import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
P = "harbor_jobservice_"


@pytest.fixture
def serve() -> Iterator:  # type: ignore[type-arg]
    procs = []

    def start(example: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / example),
                                 "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        return base

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def call(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def scrape_url(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def requests_total(text: str) -> dict:  # type: ignore[type-arg]
    return {dict(labels)["operation"] + " " + dict(labels)["method"] + " " + dict(labels)["code"]: v
            for (name, labels), v in samples(text).items()
            if name == P + "http_request_total"}


@pytest.mark.parametrize(
    ("example", "hits", "expected"),
    [
        ("starlette_app.py",
         [("/api/jobs/1", "GET"), ("/api/jobs/2", "GET"), ("/api/jobs/2/retry", "POST"),
          ("/nope/3", "GET")],
         {"/api/jobs/{job_id:int} GET 200": 2.0, "/api/jobs/{job_id:int}/retry POST 200": 1.0,
          "unknown GET 404": 1.0}),
        ("fastapi_app.py",
         [("/v1/jobs/1", "GET"), ("/v1/jobs/0", "GET"), ("/v1/jobs/5/replicate", "POST"),
          ("/v1/nope", "GET")],
         {"/v1/jobs/{job_id} GET 200": 1.0, "/v1/jobs/{job_id} GET 404": 1.0,
          "/v1/jobs/{job_id}/replicate POST 200": 1.0, "unknown GET 404": 1.0}),
        ("flask_app.py",
         [("/jobs/1", "GET"), ("/jobs/2", "GET"), ("/jobs/0", "GET"), ("/jobs/3/scan", "POST"),
          ("/missing", "GET")],
         {"/jobs/<int:job_id> GET 200": 2.0, "/jobs/<int:job_id> GET 404": 1.0,
          "/jobs/<int:job_id>/scan POST 200": 1.0, "unknown GET 404": 1.0}),
        ("django_app.py",
         [("/jobs/1/", "GET"), ("/jobs/22/", "GET"), ("/missing/", "GET")],
         {"/jobs/<int:job_id>/ GET 200": 2.0, "unknown GET 404": 1.0}),
    ],
)
def test_example_counts_by_route_template(serve, example: str, hits, expected) -> None:  # type: ignore[no-untyped-def]
    base = serve(example)
    for path, method in hits:
        call(base + path, method)
    # A WSGI server closes the response (where the request is recorded) just after
    # sending its last byte, so the last request may land a moment after the client
    # has read it.
    deadline = time.monotonic() + 10
    text = scrape_url(base)
    while requests_total(text) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        text = scrape_url(base)
    assert requests_total(text) == expected
    # No raw path ever becomes a label value.
    assert "/jobs/22" not in text and "/missing" not in text and "/nope" not in text
    assert samples(text)[(P + "http_inflight_requests", ())] == 0.0
    promtool_check(text)


@pytest.mark.parametrize("example", ["starlette_app.py", "fastapi_app.py", "flask_app.py",
                                     "django_app.py"])
def test_example_serves_metrics_at_the_path_itself(serve, example: str) -> None:  # type: ignore[no-untyped-def]
    import http.client
    from urllib.parse import urlsplit

    base = urlsplit(serve(example))
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=10)
    try:
        conn.request("GET", "/metrics")  # as the docstrings say: no redirect to /metrics/
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200, resp.getheader("Location")
    assert P + "info" in body
