"""ASGIMiddleware under a real uvicorn server on a loopback port, with exact values."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Dict, List

import httpx
import pytest
import uvicorn
import websockets
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from jobmetrics import ASGIMiddleware, JobMetrics
from promcheck import promtool_check, samples, scrape
from servers import free_port

P = "harbor_jobservice_"


class Gate:
    """Holds /slow requests until the test opens it, counting arrivals."""

    def __init__(self) -> None:
        self.arrived = 0
        self.loop: Any = None
        self.event: Any = None

    def open(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


def make_app(m: JobMetrics, gate: Gate, started: List[str]) -> Starlette:
    async def job(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params["job_id"]))

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0.1)
                yield b"x"
        return StreamingResponse(chunks())

    async def slow(request: Request) -> PlainTextResponse:
        if gate.event is None:
            gate.loop, gate.event = asyncio.get_running_loop(), asyncio.Event()
        gate.arrived += 1
        await gate.event.wait()
        return PlainTextResponse("done")

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        started.append("up")
        yield

    app = Starlette(
        routes=[
            Route("/jobs/{job_id:int}", job, methods=["GET", "POST"]),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/slow", slow),
            Mount("/api", routes=[Route("/items/{name}", item)]),
            WebSocketRoute("/ws", ws),
            Mount("/metrics", app=m.make_asgi_app()),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(ASGIMiddleware, metrics=m)
    return app


@pytest.fixture
def served(registry: CollectorRegistry) -> Iterator[Dict[str, Any]]:
    m = JobMetrics(registry=registry, process_collectors=False)
    gate, started = Gate(), []  # type: ignore[var-annotated]
    app = make_app(m, gate, started)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="on", backlog=1024))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield {"base": f"http://127.0.0.1:{port}", "registry": registry, "gate": gate,
           "started": started, "m": m}
    server.should_exit = True
    thread.join(10)


def requests_total(registry: CollectorRegistry) -> Dict[str, float]:
    return {" ".join(dict(lb)[k] for k in ("method", "code", "operation")): v
            for (name, lb), v in samples(scrape(registry)).items()
            if name == P + "http_request_total"}


def settled(registry: CollectorRegistry, expected: Dict[str, float]) -> Dict[str, float]:
    """``requests_total`` once it equals ``expected`` (or after 10 s): the server records a
    request just after writing its last byte, so the client may read it a moment before."""
    deadline = time.monotonic() + 10
    while requests_total(registry) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return requests_total(registry)


def inflight(registry: CollectorRegistry) -> float:
    return samples(scrape(registry))[(P + "http_inflight_requests", ())]


def test_counts_by_method_code_and_route_template(served: Dict[str, Any]) -> None:
    base, reg = served["base"], served["registry"]
    with httpx.Client(base_url=base) as c:
        assert c.get("/jobs/1").status_code == 200
        assert c.get("/jobs/2").status_code == 200
        assert c.post("/jobs/3").status_code == 200
        assert c.get("/api/items/abc").status_code == 200
        assert c.get("/nope/42").status_code == 404
        assert c.request("PURGE", "/jobs/4").status_code == 405
        assert c.request("BREW", "/x").status_code == 404
        assert c.get("/metrics", follow_redirects=True).status_code == 200  # excluded
    expected = {
        "GET 200 /jobs/{job_id:int}": 2.0,
        "POST 200 /jobs/{job_id:int}": 1.0,
        "GET 200 /api/items/{name}": 1.0,
        "GET 404 unknown": 1.0,
        "other 405 /jobs/{job_id:int}": 1.0,
        "other 404 unknown": 1.0,
    }
    assert settled(reg, expected) == expected
    text = scrape(reg)
    for raw in ("/jobs/1", "/jobs/2", "/nope", "/api/items/abc", "BREW", "PURGE", "/metrics"):
        assert raw + '"' not in text and raw + "/" not in text.replace("{", "")
    assert inflight(reg) == 0.0
    assert samples(text)[(P + "http_request_duration_seconds_count",
                          (("method", "GET"), ("operation", "/jobs/{job_id:int}")))] == 2.0
    promtool_check(text)


def test_exception_counts_500_and_reraises(served: Dict[str, Any]) -> None:
    with httpx.Client(base_url=served["base"]) as c:
        assert c.get("/boom").status_code == 500
    assert settled(served["registry"], {"GET 500 /boom": 1.0}) == {"GET 500 /boom": 1.0}
    assert inflight(served["registry"]) == 0.0


def test_streaming_duration_runs_to_last_byte(served: Dict[str, Any]) -> None:
    with httpx.Client(base_url=served["base"]) as c:
        assert c.get("/stream").content == b"xxx"
    assert settled(served["registry"], {"GET 200 /stream": 1.0}) == {"GET 200 /stream": 1.0}
    s = samples(scrape(served["registry"]))
    key = (("method", "GET"), ("operation", "/stream"))
    assert s[(P + "http_request_duration_seconds_count", key)] == 1.0
    assert s[(P + "http_request_duration_seconds_sum", key)] >= 0.3


def test_inflight_exact_under_200_concurrent_requests(served: Dict[str, Any]) -> None:
    reg, gate = served["registry"], served["gate"]

    async def run() -> List[int]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=served["base"], limits=limits,
                                     timeout=60) as c:
            tasks = [asyncio.create_task(c.get("/slow")) for _ in range(200)]
            deadline = time.monotonic() + 30
            while gate.arrived < 200:
                assert time.monotonic() < deadline, f"only {gate.arrived} arrived"
                await asyncio.sleep(0.02)
            assert inflight(reg) == 200.0
            gate.open()
            return [r.status_code for r in await asyncio.gather(*tasks)]

    assert asyncio.run(run()) == [200] * 200
    assert settled(reg, {"GET 200 /slow": 200.0}) == {"GET 200 /slow": 200.0}
    assert inflight(reg) == 0.0


def test_client_disconnect_leaves_no_request_in_flight(served: Dict[str, Any]) -> None:
    reg, gate = served["registry"], served["gate"]

    async def run() -> None:
        async with httpx.AsyncClient(base_url=served["base"], timeout=60) as c:
            task = asyncio.create_task(c.get("/slow"))
            while gate.arrived < 1:
                await asyncio.sleep(0.01)
            assert inflight(reg) == 1.0
            task.cancel()  # the client hangs up before any response
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
    gate.open()  # the handler finishes and its response goes nowhere
    deadline = time.monotonic() + 10
    while inflight(reg) != 0.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inflight(reg) == 0.0
    assert requests_total(reg) == {"GET 200 /slow": 1.0}


def test_lifespan_and_websocket_pass_through(served: Dict[str, Any]) -> None:
    assert served["started"] == ["up"]  # uvicorn's lifespan reached the app through us
    reg = served["registry"]

    async def echo() -> List[str]:
        url = served["base"].replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            await ws.send("hi")
            return [str(await ws.recv())]

    assert asyncio.run(echo()) == ["hi"]  # a real websocket through uvicorn and us
    assert requests_total(reg) == {}
    assert inflight(reg) == 0.0


def test_disabled_metrics_is_a_pass_through(registry: CollectorRegistry) -> None:
    m = JobMetrics(registry=registry, process_collectors=False, enabled=False)
    app = make_app(m, Gate(), [])
    with TestClient(app) as client:
        assert client.get("/jobs/1").text == "1"
        with pytest.raises(RuntimeError, match="boom"):
            client.get("/boom")
    assert P + "http_request_total" not in scrape(registry)


def test_unhandled_exception_is_reraised_unchanged(registry: CollectorRegistry) -> None:
    m = JobMetrics(registry=registry, process_collectors=False)
    app = make_app(m, Gate(), [])
    with TestClient(app) as client, pytest.raises(RuntimeError, match=r"^boom$"):
        client.get("/boom")
    assert requests_total(registry) == {"GET 500 /boom": 1.0}
    assert inflight(registry) == 0.0


def test_operation_callable_and_series_budget(registry: CollectorRegistry,
                                              caplog: pytest.LogCaptureFixture) -> None:
    m = JobMetrics(registry=registry, process_collectors=False)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = ASGIMiddleware(app, metrics=m, operation=lambda s: s["path"], max_series=2)
    client = TestClient(wrapped)  # no lifespan: this bare app answers http only
    for p in ("/a", "/b", "/c", "/d", "/a"):
        client.get(p)
    assert requests_total(registry) == {"GET 200 /a": 2.0, "GET 200 /b": 1.0,
                                        "GET 200 overflow": 2.0}
    warnings = [r for r in caplog.records if "max_series" in r.getMessage()]
    assert len(warnings) == 1
    promtool_check(scrape(registry))


def test_bad_arguments_name_the_argument(m: JobMetrics) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(TypeError, match="operation"):
        ASGIMiddleware(app, metrics=m, operation="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^app must be the ASGI application to wrap \(a "
                       r"callable\), got NoneType$"):
        ASGIMiddleware(None, metrics=m)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_series"):
        ASGIMiddleware(app, metrics=m, max_series=0)
    with pytest.raises(TypeError, match="exclude_paths"):
        ASGIMiddleware(app, metrics=m, exclude_paths="/health")


def test_cancelled_before_response_is_499_and_propagates(m: JobMetrics,
                                                         registry: CollectorRegistry) -> None:
    async def forever(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 206, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await asyncio.Event().wait()

    async def run() -> None:
        scope = {"type": "http", "method": "GET", "path": "/x", "root_path": ""}

        async def receive() -> Any:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            return None

        for app in (forever, stream):
            task = asyncio.create_task(
                ASGIMiddleware(app, metrics=m, operation=lambda s: "/x")(scope, receive, send))
            await asyncio.sleep(0.01)
            assert inflight(registry) == 1.0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert inflight(registry) == 0.0
    assert requests_total(registry) == {"GET 499 /x": 1.0, "GET 206 /x": 1.0}


def test_excluded_path_behind_a_root_path(m: JobMetrics, registry: CollectorRegistry) -> None:
    async def run() -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            return None

        app = ASGIMiddleware(TestApp(), metrics=m, exclude_paths=["/metrics", "/healthz"])
        for path, root in (("/svc/metrics", "/svc"), ("/healthz", ""), ("/svc/jobs", "/svc")):
            await app({"type": "http", "method": "GET", "path": path, "root_path": root},
                      receive, send)

    asyncio.run(run())
    assert requests_total(registry) == {"GET 200 unknown": 1.0}


class TestApp:
    __test__ = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_mount_with_path_parameters_records_its_template(registry: CollectorRegistry) -> None:
    m = JobMetrics(registry=registry, process_collectors=False)

    async def job(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params))

    async def files(scope: Any, receive: Any, send: Any) -> None:  # a mounted bare app
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"file"})

    inner = Starlette(routes=[Route("/jobs/{job_id}", job)])
    app = Starlette(routes=[
        Mount("/tenants/{tenant}", routes=[
            Route("/jobs/{job_id}", job),
            Mount("/projects/{project}", app=inner),
            Mount("/files", app=files),
        ]),
    ])
    app.add_middleware(ASGIMiddleware, metrics=m)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=20) as client:
            for tenant in ("acme", "globex"):
                assert client.get(f"/tenants/{tenant}/jobs/1").status_code == 200
                assert client.get(f"/tenants/{tenant}/projects/p1/jobs/2").status_code == 200
                assert client.get(f"/tenants/{tenant}/files/a/b.txt").status_code == 200
            assert client.get("/tenants/acme/nothing").status_code == 404
        expected = {
            "GET 200 /tenants/{tenant}/jobs/{job_id}": 2.0,
            "GET 200 /tenants/{tenant}/projects/{project}/jobs/{job_id}": 2.0,
            "GET 200 /tenants/{tenant}/files/{path}": 2.0,
            "GET 404 unknown": 1.0,
        }
        assert settled(registry, expected) == expected
        text = scrape(registry)
        assert "acme" not in text and "globex" not in text and "p1" not in text
    finally:
        server.should_exit = True
        thread.join(10)
