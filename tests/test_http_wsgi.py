"""WSGIMiddleware under werkzeug's real server on a loopback port, with exact values."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import flask
import pytest
from prometheus_client import CollectorRegistry
from werkzeug.serving import make_server

from jobmetrics import JobMetrics, WSGIMiddleware
from promcheck import promtool_check, samples, scrape
from servers import free_port, wait_http

P = "harbor_jobservice_"


class Gate:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived = 0
        self.event = threading.Event()


def make_flask(gate: Gate) -> flask.Flask:
    app = flask.Flask("jobs")

    @app.route("/jobs/<int:job_id>", methods=["GET", "POST"])
    def job(job_id: int) -> str:
        return str(job_id)

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.route("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[bytes]:
            for _ in range(3):
                time.sleep(0.1)
                yield b"x"
        return flask.Response(chunks())

    @app.route("/slow")
    def slow() -> str:
        with gate.lock:
            gate.arrived += 1
        gate.event.wait(60)
        return "done"

    return app


def serve(app: Any) -> Iterator[str]:
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    server.request_queue_size = 512  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def served(registry: CollectorRegistry) -> Iterator[Dict[str, Any]]:
    m = JobMetrics(registry=registry, process_collectors=False)
    gate = Gate()
    app = make_flask(gate)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)  # type: ignore[method-assign]
    for base in serve(app):
        yield {"base": base, "registry": registry, "gate": gate, "m": m}


def call(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def requests_total(registry: CollectorRegistry) -> Dict[str, float]:
    return {" ".join(dict(lb)[k] for k in ("method", "code", "operation")): v
            for (name, lb), v in samples(scrape(registry)).items()
            if name == P + "http_request_total"}


def settled(registry: CollectorRegistry, expected: Dict[str, float]) -> Dict[str, float]:
    """``requests_total`` once it equals ``expected`` (or after 10 s): the server closes the
    response, where the request is recorded, just after writing its last byte."""
    deadline = time.monotonic() + 10
    while requests_total(registry) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return requests_total(registry)


def inflight(registry: CollectorRegistry) -> float:
    return samples(scrape(registry))[(P + "http_inflight_requests", ())]


def test_flask_counts_by_url_rule(served: Dict[str, Any]) -> None:
    base, reg = served["base"], served["registry"]
    assert call(base + "/jobs/1") == 200
    assert call(base + "/jobs/2") == 200
    assert call(base + "/jobs/3", "POST") == 200
    assert call(base + "/nope/4") == 404
    assert call(base + "/jobs/5", "DELETE") == 405
    assert call(base + "/jobs/6", "BREW") == 405
    assert call(base + "/boom") == 500  # Flask's own 500 page keeps its route
    expected = {"GET 200 /jobs/<int:job_id>": 2.0, "POST 200 /jobs/<int:job_id>": 1.0,
                "GET 404 unknown": 1.0, "GET 500 /boom": 1.0,
                # werkzeug matches no rule when only the method is wrong
                "DELETE 405 unknown": 1.0, "other 405 unknown": 1.0}
    assert settled(reg, expected) == expected
    text = scrape(reg)
    assert "/jobs/1" not in text and "/nope" not in text and "BREW" not in text
    assert inflight(reg) == 0.0
    promtool_check(text)


def test_streaming_duration_ends_at_close(served: Dict[str, Any]) -> None:
    reg = served["registry"]
    with urllib.request.urlopen(served["base"] + "/stream", timeout=10) as resp:
        assert resp.read() == b"xxx"
    assert settled(reg, {"GET 200 /stream": 1.0}) == {"GET 200 /stream": 1.0}
    s = samples(scrape(reg))
    key = (("method", "GET"), ("operation", "/stream"))
    assert s[(P + "http_request_duration_seconds_sum", key)] >= 0.3


def test_inflight_exact_under_200_concurrent_requests(served: Dict[str, Any]) -> None:
    reg, gate = served["registry"], served["gate"]
    with ThreadPoolExecutor(200) as pool:
        futures = [pool.submit(call, served["base"] + "/slow") for _ in range(200)]
        deadline = time.monotonic() + 30
        while gate.arrived < 200:
            assert time.monotonic() < deadline, f"only {gate.arrived} arrived"
            time.sleep(0.02)
        assert inflight(reg) == 200.0
        gate.event.set()
        assert [f.result() for f in futures] == [200] * 200
    assert settled(reg, {"GET 200 /slow": 200.0}) == {"GET 200 /slow": 200.0}
    assert inflight(reg) == 0.0


def environ(path: str = "/x", method: str = "GET") -> Dict[str, Any]:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "t",
            "SERVER_PORT": "80", "wsgi.url_scheme": "http"}


def test_early_close_of_the_iterable_finishes_once(m: JobMetrics, registry: CollectorRegistry
                                                   ) -> None:
    closed: List[bool] = []

    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for _ in range(100):
                yield b"chunk"
        finally:
            closed.append(True)

    wrapped = WSGIMiddleware(app, metrics=m, operation=lambda e: "/download")
    result = wrapped(environ(), lambda *a: None)
    it = iter(result)
    assert next(it) == b"chunk"
    assert inflight(registry) == 1.0
    result.close()  # type: ignore[attr-defined]  # the server gives up: client went away
    result.close()  # type: ignore[attr-defined]
    del result
    assert closed == [True]
    assert inflight(registry) == 0.0
    assert requests_total(registry) == {"GET 200 /download": 1.0}


def test_exception_before_start_response_is_500_and_reraised(m: JobMetrics,
                                                             registry: CollectorRegistry) -> None:
    err = ValueError("bad")

    def app(env: Any, start_response: Any) -> List[bytes]:
        raise err

    wrapped = WSGIMiddleware(app, metrics=m)
    with pytest.raises(ValueError) as info:
        wrapped(environ("/a/b"), lambda *a: None)
    assert info.value is err
    assert requests_total(registry) == {"GET 500 unknown": 1.0}
    assert inflight(registry) == 0.0


def test_exception_while_iterating_finishes_once(m: JobMetrics, registry: CollectorRegistry
                                                 ) -> None:
    def app(env: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise OSError("disk gone")

    result = WSGIMiddleware(app, metrics=m, operation=lambda e: "/f")(environ(), lambda *a: None)
    with pytest.raises(OSError, match="disk gone"):
        list(result)
    result.close()  # type: ignore[attr-defined]  # PEP 3333: the server still closes it
    assert inflight(registry) == 0.0
    assert requests_total(registry) == {"GET 200 /f": 1.0}


def test_excluded_paths_and_disabled(registry: CollectorRegistry) -> None:
    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    m = JobMetrics(registry=registry, process_collectors=False)
    wrapped = WSGIMiddleware(app, metrics=m, exclude_paths=["/healthz"])
    assert wrapped(environ("/healthz"), lambda *a: None) == [b"ok"]
    off = JobMetrics("off", registry=CollectorRegistry(), enabled=False)
    assert WSGIMiddleware(app, metrics=off)(environ(), lambda *a: None) == [b"ok"]
    assert requests_total(registry) == {}


def test_series_budget_folds_into_overflow(m: JobMetrics, registry: CollectorRegistry,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = WSGIMiddleware(app, metrics=m, operation=lambda e: e["PATH_INFO"], max_series=3)
    for i in range(10):
        wrapped(environ(f"/p{i}"), lambda *a: None).close()  # type: ignore[attr-defined]
    assert requests_total(registry) == {"GET 200 /p0": 1.0, "GET 200 /p1": 1.0,
                                        "GET 200 /p2": 1.0, "GET 200 overflow": 7.0}
    assert len([r for r in caplog.records if "max_series" in r.getMessage()]) == 1
    promtool_check(scrape(registry))


def test_multiprocess_mode_through_the_middleware(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    m = JobMetrics(registry=reg, multiprocess_dir=str(tmp_path), process_collectors=False)
    gate = Gate()
    app = make_flask(gate)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)  # type: ignore[method-assign]
    for base in serve(app):
        assert call(base + "/jobs/1") == 200
        assert call(base + "/jobs/2", "POST") == 200
        assert call(base + "/missing") == 404
        expected = {"GET 200 /jobs/<int:job_id>": 1.0, "POST 200 /jobs/<int:job_id>": 1.0,
                    "GET 404 unknown": 1.0}
        assert settled(reg, expected) == expected
    assert inflight(reg) == 0.0
    promtool_check(scrape(reg))


def test_series_budget_is_shared_by_middlewares_on_one_family(
        m: JobMetrics, registry: CollectorRegistry) -> None:
    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    first = WSGIMiddleware(app, metrics=m, operation=lambda e: e["PATH_INFO"], max_series=2)
    second = WSGIMiddleware(app, metrics=m, operation=lambda e: e["PATH_INFO"], max_series=2)
    for wrapped, path in ((first, "/a"), (second, "/b"), (second, "/c"), (first, "/d"),
                          (first, "/b")):
        wrapped(environ(path), lambda *a: None).close()  # type: ignore[attr-defined]
    assert requests_total(registry) == {"GET 200 /a": 1.0, "GET 200 /b": 2.0,
                                        "GET 200 overflow": 2.0}


GUNICORN_APP = '''
import flask
from jobmetrics import JobMetrics, WSGIMiddleware

m = JobMetrics(process_collectors=False)      # PROMETHEUS_MULTIPROC_DIR: multi-process mode
app = flask.Flask("jobs")

@app.route("/jobs/<int:job_id>", methods=["GET", "POST"])
def job(job_id):
    return str(job_id)

app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)
metrics_app = m.make_wsgi_app()

def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        return metrics_app(environ, start_response)
    return app(environ, start_response)
'''


def test_gunicorn_workers_in_multiprocess_mode(tmp_path: Path) -> None:
    """Two gunicorn workers, one answer: exact counts from whichever worker is scraped."""
    if shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("gunicorn missing")
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    (tmp_path / "gapp.py").write_text(GUNICORN_APP)
    (tmp_path / "gconf.py").write_text("from jobmetrics.multiprocess import child_exit\n")
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    env = {k: v for k, v in env.items() if not k.startswith("JOBMETRICS_")}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c", "gconf.py",
         "-w", "2", "-b", f"127.0.0.1:{port}", "gapp:application"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        with ThreadPoolExecutor(8) as pool:  # concurrent, so both workers serve some
            codes = list(pool.map(call, [base + f"/jobs/{i}" for i in range(30)]
                                  + [base + "/missing"] * 5))
        assert codes == [200] * 30 + [404] * 5
        assert call(base + "/jobs/1", "POST") == 200
        expected = {"GET 200 /jobs/<int:job_id>": 30.0, "POST 200 /jobs/<int:job_id>": 1.0,
                    "GET 404 unknown": 1.0 * 5}
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
            got = {" ".join(dict(lb)[k] for k in ("method", "code", "operation")): v
                   for (name, lb), v in samples(text).items()
                   if name == P + "http_request_total"}
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == expected
        assert samples(text)[(P + "http_inflight_requests", ())] == 0.0
        assert "/jobs/1" not in text
        promtool_check(text)
    finally:
        proc.terminate()
        proc.wait(10)


def test_exhausted_but_never_closed_response_ends_once(m: JobMetrics,
                                                        registry: CollectorRegistry) -> None:
    """werkzeug's server skips ``close()`` when the client resets the connection just
    after the response (urllib does, leaving an error body unread), and keeps the
    response alive until the garbage collector runs: the request ends with its last byte
    anyway, and a later close() does not count it again."""
    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("404 NOT FOUND", [])
        return [b"not ", b"found"]

    result = WSGIMiddleware(app, metrics=m)(environ("/missing"), lambda *a: None)
    assert inflight(registry) == 1.0
    assert list(result) == [b"not ", b"found"]  # the server wrote every byte
    assert inflight(registry) == 0.0  # result is still referenced: no __del__ involved
    assert requests_total(registry) == {"GET 404 unknown": 1.0}
    result.close()  # type: ignore[attr-defined]
    assert requests_total(registry) == {"GET 404 unknown": 1.0}


@pytest.mark.parametrize("config", [{"TESTING": True}, {"PROPAGATE_EXCEPTIONS": True}])
def test_flask_propagated_exception_keeps_its_url_rule(
    m: JobMetrics, registry: CollectorRegistry, config: Dict[str, Any]
) -> None:
    app = flask.Flask("propagating")
    app.config.update(config)
    raised: List[BaseException] = []

    @app.route("/jobs/<int:job_id>/retry", methods=["POST"])
    def retry(job_id: int) -> str:
        err = LookupError(f"job {job_id} is gone")
        raised.append(err)
        raise err

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)  # type: ignore[method-assign]
    with pytest.raises(LookupError) as info:
        app.test_client().post("/jobs/7/retry")
    assert info.value is raised[0]
    assert requests_total(registry) == {"POST 500 /jobs/<int:job_id>/retry": 1.0}
    assert inflight(registry) == 0.0


def test_app_that_is_not_callable_is_a_type_error(m: JobMetrics) -> None:
    with pytest.raises(TypeError, match=r"^app must be the WSGI application to wrap \(a "
                       r"callable\), got NoneType$"):
        WSGIMiddleware(None, metrics=m)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        WSGIMiddleware("app:application", metrics=m)  # type: ignore[arg-type]


def test_content_length_of_a_list_response_survives_wsgiref(
    m: JobMetrics, registry: CollectorRegistry
) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])  # no Content-Length
        return [b"hello"]

    server = make_server("127.0.0.1", 0, WSGIMiddleware(app, metrics=m), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/x",
                                    timeout=10) as resp:
            assert resp.read() == b"hello"
            assert resp.headers["Content-Length"] == "5"  # wsgiref sets it from len()
    finally:
        server.shutdown()
        server.server_close()
    assert settled(registry, {"GET 200 unknown": 1.0}) == {"GET 200 unknown": 1.0}


FILE_APP = '''
import io, os
from jobmetrics import JobMetrics, WSGIMiddleware

m = JobMetrics(process_collectors=False)
metrics_app = m.make_wsgi_app()


class NoRead(io.FileIO):
    # A server that iterated the wrapper would get nothing: only sendfile() (which reads
    # the descriptor) sends the file's bytes.
    def read(self, size=-1):
        return b""


def files(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](NoRead(os.environ["BLOB"]))


wrapped = WSGIMiddleware(files, metrics=m, operation=lambda environ: "/download")


def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        return metrics_app(environ, start_response)
    return wrapped(environ, start_response)
'''


def test_file_wrapper_goes_out_with_sendfile_under_gunicorn(tmp_path: Path) -> None:
    if shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("gunicorn missing")
    blob = tmp_path / "blob.bin"
    data = os.urandom(300_000)
    blob.write_bytes(data)
    (tmp_path / "fapp.py").write_text(FILE_APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBMETRICS_", "PROMETHEUS_MULTIPROC"))}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-w", "1", "-b",
         f"127.0.0.1:{port}", "fapp:application"],
        cwd=tmp_path, env={**env, "BLOB": str(blob)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        for _ in range(3):
            with urllib.request.urlopen(base + "/download", timeout=10) as resp:
                assert resp.read() == data
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
                got = samples(resp.read().decode())
            total = got.get((P + "http_request_total", (("code", "200"), ("method", "GET"),
                                                        ("operation", "/download"))))
            if total == 3.0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert total == 3.0
        assert got[(P + "http_inflight_requests", ())] == 0.0
    finally:
        proc.terminate()
        proc.wait(10)


def test_file_wrapper_returned_as_the_servers_own_object(
    m: JobMetrics, registry: CollectorRegistry
) -> None:
    from wsgiref.util import FileWrapper

    def app(env: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return env["wsgi.file_wrapper"](io.BytesIO(b"abc"))

    env = environ("/f")
    env["wsgi.file_wrapper"] = FileWrapper
    result = WSGIMiddleware(app, metrics=m)(env, lambda *a: None)
    assert isinstance(result, FileWrapper)
    assert inflight(registry) == 1.0
    result.close()
    result.close()
    assert inflight(registry) == 0.0
    assert requests_total(registry) == {"GET 200 unknown": 1.0}
