"""jobmetrics.arq on a real arq worker and a real redis-server."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any, Dict

import pytest

pytest.importorskip("arq")

from arq import Retry, create_pool
from arq.connections import RedisSettings
from arq.worker import create_worker, func
from prometheus_client import CollectorRegistry

import jobmetrics.arq
from exporter_support import RedisServer, redis_server  # noqa: F401
from jobmetrics import JobMetrics
from promcheck import promtool_check, samples, scrape
from worker_support import run_example

P = "harbor_jobservice_"
tries: Dict[str, int] = {}


async def ok(ctx: Dict[str, Any]) -> str:
    return "ok"


async def boom(ctx: Dict[str, Any]) -> None:
    raise ValueError("boom")


async def flaky(ctx: Dict[str, Any]) -> str:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)
    return "done"


async def slow(ctx: Dict[str, Any]) -> None:
    await asyncio.sleep(30)


def count(text: str, type_: str, status: str) -> float:
    return samples(text).get(
        (P + "task_process_time_seconds_count", (("status", status), ("type", type_))), 0.0)


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((P + name, tuple(sorted(labels.items()))), 0.0)


def test_arq_worker_counts_every_outcome(redis_server: RedisServer) -> None:  # noqa: F811
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    decorated = m.task("inner")(ok)

    async def twice(ctx: Dict[str, Any]) -> str:
        return await decorated(ctx)

    class WorkerSettings:
        functions = [ok, boom, func(flaky, name="flaky"), slow, func(twice, name="twice")]  # noqa: RUF012
        allow_abort_jobs = True
        poll_delay = 0.05
        max_tries = 3

    jobmetrics.arq.instrument(WorkerSettings, m)
    with pytest.raises(ValueError, match="instrumented already"):
        jobmetrics.arq.instrument(WorkerSettings, m)
    settings = RedisSettings(host="127.0.0.1", port=redis_server.port)

    async def main() -> str:
        pool = await create_pool(settings)
        worker = create_worker(WorkerSettings, redis_settings=settings, burst=False,
                               handle_signals=False)
        run = asyncio.ensure_future(worker.async_run())
        jobs = [await pool.enqueue_job(name) for name in ("ok", "ok", "boom", "flaky",
                                                           "twice")]
        for job in jobs:
            try:
                await job.result(timeout=10, poll_delay=0.05)
            except ValueError:
                pass
        held = await pool.enqueue_job("slow")
        while (await held.status()).value != "in_progress":
            await asyncio.sleep(0.02)
        while not worker.job_tasks:
            await asyncio.sleep(0.02)
        during = scrape(registry)
        assert await held.abort(timeout=10, poll_delay=0.05)
        await worker.close()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await pool.aclose()
        assert value(during, "running_task", type="slow") == 1.0
        return scrape(registry)

    text = asyncio.run(main())
    assert count(text, "ok", "success") == 2
    assert count(text, "boom", "fail") == 1
    assert count(text, "flaky", "fail") == 1
    assert count(text, "flaky", "success") == 1
    assert value(text, "task_retries_total", type="flaky") == 1
    assert count(text, "slow", "stop") == 1
    assert count(text, "inner", "success") == 1
    assert count(text, "twice", "success") == 0
    for t in ("ok", "boom", "flaky", "slow", "twice", "inner"):
        assert value(text, "running_task", type=t) == 0
    # ok x2, boom, flaky x2 (the retry is a second start), twice, slow
    assert value(text, "queue_wait_seconds_count", queue="arq:queue") == 7
    promtool_check(text)


def test_arq_bad_targets() -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")
    with pytest.raises(TypeError, match="target must be"):
        jobmetrics.arq.instrument(object(), m)
    with pytest.raises(ValueError, match="no functions"):
        jobmetrics.arq.instrument({"functions": []}, m)
    with pytest.raises(TypeError, match="metrics must be"):
        jobmetrics.arq.instrument({"functions": [ok]}, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.arq.instrument({"functions": [ok]}, m, port=70000)


def test_arq_timeout_is_fail(redis_server: RedisServer) -> None:  # noqa: F811
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    settings = RedisSettings(host="127.0.0.1", port=redis_server.port)
    worker_settings = {"functions": [func(slow, name="slow", timeout=0.2, max_tries=1)],
                       "poll_delay": 0.05}
    jobmetrics.arq.instrument(worker_settings, m)

    async def main() -> None:
        pool = await create_pool(settings)
        job = await pool.enqueue_job("slow")
        worker = create_worker(worker_settings, redis_settings=settings, burst=True,
                               handle_signals=False)
        await worker.main()
        await worker.close()
        with pytest.raises(asyncio.TimeoutError):
            await job.result(timeout=5, poll_delay=0.05)
        await pool.aclose()

    asyncio.run(main())
    text = scrape(registry)
    assert count(text, "slow", "fail") == 1
    assert count(text, "slow", "stop") == 0
    assert value(text, "running_task", type="slow") == 0


def test_example_arq_worker(redis_server: RedisServer) -> None:  # noqa: F811
    """docs/arq.md: examples/arq_worker.py, as documented."""
    out = run_example("arq_worker.py", str(redis_server.port))
    assert 'task_total{status="success",type="resize"} 1.0' in out
    assert 'task_total{status="fail",type="broken"} 1.0' in out
    assert 'task_total{status="fail",type="send_mail"} 1.0' in out
    assert 'task_total{status="success",type="send_mail"} 1.0' in out
    assert 'task_retries_total{type="send_mail"} 1.0' in out


def test_arq_port_serves_from_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    port = free_port()
    monkeypatch.setenv("JOBMETRICS_ADDR", "127.0.0.1")
    seen = []

    async def user_startup(ctx: Dict[str, Any]) -> None:
        seen.append(ctx)

    settings: Dict[str, Any] = {"functions": [ok], "on_startup": user_startup}
    jobmetrics.arq.instrument(settings, m, port=port)
    ctx: Dict[str, Any] = {}
    asyncio.run(settings["on_startup"](ctx))  # as the worker calls it when it starts
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"harbor_jobservice_info" in r.read()
        assert seen == [ctx]
    finally:
        ctx["jobmetrics_server"][0].shutdown()
        ctx["jobmetrics_server"][0].server_close()
