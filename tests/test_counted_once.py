"""One unit of work is counted once: a worker pool or an executor running a ``@m.task``
function records it under the innermost type only (SPEC section 1)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics
from promcheck import scrape, value

P = "harbor_jobservice_"


def counts(r: CollectorRegistry, t: str) -> tuple:  # type: ignore[type-arg]
    return tuple(value(r, P + "task_total", type=t, status=s)
                 for s in ("success", "fail", "stop"))


def test_worker_pool_handler_calling_a_task_counts_each_job_once(m: JobMetrics,
                                                                 registry) -> None:
    release = asyncio.Event()

    @m.task("gc")
    async def collect_garbage(job: int) -> None:
        await release.wait()

    async def handler(job: int) -> None:  # the pool's own type: "handler"
        await collect_garbage(job)

    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="jobs")
        async with m.worker_pool(q, handler, workers=3):
            for i in range(3):
                await q.put(i)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if value(registry, P + "running_task", type="gc") == 3.0:
                    break
            assert value(registry, P + "running_task", type="gc") == 3.0
            assert value(registry, P + "running_task", type="handler") == 0.0
            release.set()
            await q.join()

    asyncio.run(main())
    assert counts(registry, "gc") == (3.0, 0.0, 0.0)
    assert counts(registry, "handler") == (0.0, 0.0, 0.0)
    assert value(registry, P + "running_task", type="gc") == 0.0


def test_executor_dispatcher_counts_under_the_inner_type(m: JobMetrics, registry) -> None:
    started = threading.Event()
    release = threading.Event()

    @m.task("replication")
    def replicate() -> str:
        started.set()
        release.wait(10)
        return "done"

    @m.task("scan")
    def scan() -> None:
        raise RuntimeError("scan failed")

    def dispatch(kind: str) -> str:
        if kind == "scan":
            scan()
        return replicate()

    with m.instrument_executor(ThreadPoolExecutor(1)) as ex:
        first = ex.submit(dispatch, "replication")
        second = ex.submit(dispatch, "scan")
        assert started.wait(10)
        # Until it starts, a job is pending under what was submitted: the dispatcher.
        assert value(registry, P + "pending_task", type="dispatch") == 1.0
        assert value(registry, P + "running_task", type="replication") == 1.0
        assert value(registry, P + "running_task", type="dispatch") == 0.0
        release.set()
        assert first.result() == "done"
        assert isinstance(second.exception(), RuntimeError)
    assert counts(registry, "replication") == (1.0, 0.0, 0.0)
    assert counts(registry, "scan") == (0.0, 1.0, 0.0)
    assert counts(registry, "dispatch") == (0.0, 0.0, 0.0)
    assert value(registry, P + "pending_task", type="dispatch") == 0.0
    assert value(registry, P + "running_task", type="dispatch") == 0.0


def test_an_undecorated_job_is_still_counted_by_the_outer_layer(m: JobMetrics,
                                                                registry) -> None:
    def plain(i: int) -> int:
        return i

    with m.instrument_executor(ThreadPoolExecutor(2)) as ex:
        assert list(ex.map(plain, range(4))) == [0, 1, 2, 3]
    assert counts(registry, "plain") == (4.0, 0.0, 0.0)


def test_nested_tasks_called_directly_stay_two_tasks(m: JobMetrics, registry) -> None:
    @m.task("copy")
    def copy() -> None:
        pass

    @m.task("replication")
    def replicate() -> None:
        copy()

    replicate()
    assert counts(registry, "replication") == (1.0, 0.0, 0.0)
    assert counts(registry, "copy") == (1.0, 0.0, 0.0)


def test_disabled_metrics_pool_and_executor_still_run(registry: CollectorRegistry) -> None:
    off = JobMetrics(registry=registry, enabled=False)

    @off.task("t")
    def job() -> int:
        return 7

    ex = off.instrument_executor(ThreadPoolExecutor(1))
    assert ex.submit(job).result() == 7
    ex.shutdown()
    assert scrape(registry) == ""


def test_running_an_executor_inside_a_task_counts_the_inner_job(m: JobMetrics,
                                                               registry) -> None:
    @m.task("inner")
    def inner() -> int:
        return 1

    with m.instrument_executor(ThreadPoolExecutor(1)) as ex:
        @m.task("outer")
        def outer() -> int:
            return int(ex.submit(inner).result())

        assert outer() == 1
    assert counts(registry, "outer") == (1.0, 0.0, 0.0)
    assert counts(registry, "inner") == (1.0, 0.0, 0.0)


def test_two_wsgi_middlewares_on_one_app_count_a_request_once(m: JobMetrics,
                                                              registry) -> None:
    from jobmetrics import WSGIMiddleware

    def app(environ: dict, start_response) -> list:  # type: ignore[no-untyped-def, type-arg]
        start_response("200 OK", [])
        return [b"ok"]

    other = JobMetrics("other", registry=registry, process_collectors=False)
    inner = WSGIMiddleware(app, metrics=m, operation=lambda e: "/x")
    wrapped = WSGIMiddleware(WSGIMiddleware(inner, metrics=m, operation=lambda e: "/x"),
                             metrics=other, operation=lambda e: "/x")
    for _ in range(3):
        body = wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None)
        assert list(body) == [b"ok"]
        body.close()  # type: ignore[attr-defined]
    labels = {"method": "GET", "code": "200", "operation": "/x"}
    assert value(registry, P + "http_request_total", **labels) == 3.0
    # Other families are other families: they record too.
    assert value(registry, "other_jobservice_http_request_total", **labels) == 3.0
    assert value(registry, P + "http_inflight_requests") == 0.0


def test_two_asgi_middlewares_on_one_app_count_a_request_once(m: JobMetrics,
                                                              registry) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from jobmetrics import ASGIMiddleware

    async def hello(request) -> PlainTextResponse:  # type: ignore[no-untyped-def]
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/items/{id}", hello)])
    app.add_middleware(ASGIMiddleware, metrics=m)
    outer = ASGIMiddleware(app, metrics=m)
    with TestClient(outer) as client:
        for i in range(4):
            assert client.get(f"/items/{i}").text == "hi"
    labels = {"method": "GET", "code": "200", "operation": "/items/{id}"}
    assert value(registry, P + "http_request_total", **labels) == 4.0
    assert value(registry, P + "http_inflight_requests") == 0.0
