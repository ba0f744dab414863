"""jobmetrics.procrastinate on Procrastinate's real worker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

pytest.importorskip("procrastinate")

import procrastinate
from procrastinate.exceptions import JobAborted
from prometheus_client import CollectorRegistry

import jobmetrics.procrastinate
from jobmetrics import JobMetrics, Stopped
from pg_support import PostgresServer
from promcheck import promtool_check, samples, scrape
from servers import free_port, get, wait_http
from worker_support import gauge, run_example, total

P = "harbor_jobservice_"
ROOT = Path(__file__).resolve().parent.parent
FINAL = ("succeeded", "failed", "aborted", "cancelled")


def retries(got: Dict[Any, float], type_: str) -> float:
    return got.get((P + "task_retries_total", (("type", type_),)), 0.0)


def waits(got: Dict[Any, float], queue: str, suffix: str = "count") -> float:
    return got.get((P + f"queue_wait_seconds_{suffix}", (("queue", queue),)), 0.0)


def wait_for(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.03)


def statuses(pg: PostgresServer, db: str) -> List[str]:
    with pg.connect(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT status::text FROM procrastinate_jobs ORDER BY id")]


def new_app(pg: PostgresServer, name: str) -> Tuple[Any, str]:
    """An app on a fresh database with Procrastinate's schema applied, and the database."""
    db = pg.new_database(name)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg.url(db)))
    with app.open():
        app.schema_manager.apply_schema()
    return app, db


def test_cli_worker_counts_every_outcome(pg_server: PostgresServer) -> None:
    """``procrastinate --app=... worker`` in a subprocess, serving ``$JOBMETRICS_PORT``."""
    app, db = new_app(pg_server, "jm_procrastinate_cli")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    env.update(JOBMETRICS_PORT=str(port), JOBMETRICS_ADDR="127.0.0.1",
               JOBMETRICS_TEST_PG_URL=pg_server.url(db),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]))
    with app.open():
        for name in ("ok", "ok", "aok", "boom", "flaky", "doomed", "twice"):
            app.configure_task(name).defer()
    # A retry is persisted after its slot frees; a fetch in between finds nothing and the
    # worker then polls (no NOTIFY for a retry): a short interval keeps the test quick.
    worker = subprocess.Popen(
        [sys.executable, "-m", "procrastinate", "--app=procrastinate_app.app", "worker",
         "--concurrency=2", "--fetch-job-polling-interval=0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/metrics")
        # 7 jobs; flaky and doomed each run twice (one retry each)
        wait_for(lambda: all(s in FINAL for s in statuses(pg_server, db)))
        with app.open():
            held = [app.configure_task(name).defer() for name in ("hold", "hold_sync")]
        wait_for(lambda: statuses(pg_server, db)[-2:] == ["doing", "doing"])
        during = samples(get(base + "/metrics"))
        with app.open():
            for job_id in held:
                assert app.job_manager.cancel_job_by_id(job_id, abort=True)
        wait_for(lambda: statuses(pg_server, db)[-2:] == ["aborted", "aborted"])
        text = get(base + "/metrics")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, err = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - diagnostic
            worker.kill()
            _, err = worker.communicate()
    assert worker.returncode == 0, err.decode()[-3000:]
    assert gauge(during, "running_task", "hold") == 1
    assert gauge(during, "running_task", "hold_sync") == 1
    got = samples(text)
    assert total(got, "ok", "success") == 2
    assert total(got, "aok", "success") == 1
    assert total(got, "boom", "fail") == 1
    assert retries(got, "boom") == 0
    assert total(got, "flaky", "fail") == 1
    assert total(got, "flaky", "success") == 1
    assert retries(got, "flaky") == 1
    # retry=1: the first failure is retried, the second is final
    assert total(got, "doomed", "fail") == 2
    assert retries(got, "doomed") == 1
    assert total(got, "inner", "success") == 1
    assert total(got, "twice", "success") == 0
    assert total(got, "hold", "stop") == 1
    assert total(got, "hold_sync", "stop") == 1
    for t in ("ok", "aok", "boom", "flaky", "doomed", "twice", "inner", "hold",
              "hold_sync"):
        assert gauge(got, "running_task", t) == 0, t
    # Only the retries were due at a time of their own (scheduled_at).
    assert waits(got, "default") == 2
    promtool_check(text)


def test_in_process_shutdown_schedule_and_explicit_middlewares(
        pg_server: PostgresServer) -> None:
    app, db = new_app(pg_server, "jm_procrastinate_inproc")
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    started = asyncio.Event()

    @app.task(name="hold", queue="slow")
    async def hold() -> None:
        started.set()
        await asyncio.sleep(60)

    @app.task(name="ok", queue="sched")
    def ok() -> str:
        return "ok"

    @app.task(name="halt", queue="sched")
    def halt() -> None:
        raise Stopped("nothing to do")

    seen: List[str] = []

    async def user_mw(call_next: Any, context: Any, worker: Any) -> Any:
        seen.append(context.job.task_name)
        return await call_next()

    jobmetrics.procrastinate.instrument(app, m)
    assert app.worker_defaults["worker_middleware"][0].__class__.__name__ == \
        "JobMetricsMiddleware"

    async def main() -> None:
        async with app.open_async():
            past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
                seconds=5)
            await ok.configure(schedule_at=past).defer_async()
            await ok.defer_async()
            await halt.defer_async()
            # An explicit worker_middleware list (replacing worker_defaults') with a
            # second JobMetricsMiddleware of the same metrics: each job counted once.
            await app.run_worker_async(
                queues=["sched"], wait=False, install_signal_handlers=False,
                listen_notify=False,
                worker_middleware=[user_mw, jobmetrics.procrastinate.JobMetricsMiddleware(m)])
            assert seen == ["ok", "ok", "halt"]

            await hold.defer_async()
            run = asyncio.ensure_future(app.run_worker_async(
                queues=["slow"], install_signal_handlers=False, listen_notify=False,
                shutdown_graceful_timeout=0.05))
            await asyncio.wait_for(started.wait(), 20)
            assert samples(scrape(registry))[(P + "running_task", (("type", "hold"),))] == 1
            run.cancel()  # as a shutdown: the worker waits 0.05 s, then aborts the job
            await asyncio.gather(run, return_exceptions=True)

    asyncio.run(main())
    text = scrape(registry)
    got = samples(text)
    assert total(got, "ok", "success") == 2
    assert total(got, "hold", "stop") == 1
    assert total(got, "halt", "stop") == 1
    assert total(got, "halt", "fail") == 0
    assert gauge(got, "running_task", "hold") == 0
    assert gauge(got, "running_task", "ok") == 0
    assert waits(got, "sched") == 1  # only the scheduled one
    assert waits(got, "sched", "sum") >= 5
    assert statuses(pg_server, db)[-1] == "aborted"
    promtool_check(text)


def test_fallback_wraps_task_functions(pg_server: PostgresServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A release without worker middlewares: each task's function is wrapped when the
    worker starts, tasks registered after instrument() included."""
    monkeypatch.setattr(jobmetrics.procrastinate, "_has_worker_middleware", lambda: False)
    app, _ = new_app(pg_server, "jm_procrastinate_fallback")
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")

    @app.task(name="early")
    def early() -> str:
        return "ok"

    jobmetrics.procrastinate.instrument(app, m)
    assert "worker_middleware" not in app.worker_defaults

    @app.task(name="late")
    async def late() -> None:
        raise ValueError("late")

    @app.task(name="quits")
    def quits() -> None:
        raise JobAborted("stop")

    async def main() -> None:
        async with app.open_async():
            for task in (early, early, late, quits):
                await task.defer_async()
            await app.run_worker_async(wait=False, install_signal_handlers=False,
                                       listen_notify=False)
            await early.defer_async()
            await app.run_worker_async(wait=False, install_signal_handlers=False,
                                       listen_notify=False)  # wrapped once, not twice

    asyncio.run(main())
    text = scrape(registry)
    got = samples(text)
    assert total(got, "early", "success") == 3
    assert total(got, "late", "fail") == 1
    assert total(got, "quits", "stop") == 1
    for t in ("early", "late", "quits"):
        assert gauge(got, "running_task", t) == 0
    assert early.func.__name__ == "early"
    promtool_check(text)


def test_bad_arguments() -> None:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=""))
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")
    with pytest.raises(TypeError, match="app must be"):
        jobmetrics.procrastinate.instrument(object(), m)
    with pytest.raises(TypeError, match="metrics must be"):
        jobmetrics.procrastinate.instrument(app, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metrics must be"):
        jobmetrics.procrastinate.JobMetricsMiddleware(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.procrastinate.instrument(app, m, port=70000)
    with pytest.raises(TypeError, match="port"):
        jobmetrics.procrastinate.instrument(app, m, port="80")  # type: ignore[arg-type]
    assert jobmetrics.procrastinate.instrument(app, m) is app
    with pytest.raises(ValueError, match="instrumented already"):
        jobmetrics.procrastinate.instrument(app, m)


def test_example_procrastinate_worker(pg_server: PostgresServer) -> None:
    """docs/procrastinate.md: examples/procrastinate_worker.py, as documented."""
    db = pg_server.new_database("jm_procrastinate_example")
    out = run_example("procrastinate_worker.py", pg_server.url(db),
                      env={"PYTHONPATH": str(ROOT / "src")})
    assert 'task_total{status="success",type="resize"} 1.0' in out
    assert 'task_total{status="fail",type="broken"} 1.0' in out
    assert 'task_total{status="fail",type="send_mail"} 1.0' in out
    assert 'task_total{status="success",type="send_mail"} 1.0' in out
    assert 'task_retries_total{type="send_mail"} 1.0' in out


def test_middleware_passes_through_when_disabled_or_broken() -> None:
    """No metrics (enabled=False) or a context it cannot read: the job runs, unchanged."""
    from types import SimpleNamespace

    async def call_next() -> str:
        return "result"

    async def failing() -> None:
        raise KeyError("from the task")

    off = jobmetrics.procrastinate.JobMetricsMiddleware(JobMetrics(enabled=False))
    ctx = SimpleNamespace(job=SimpleNamespace(task_name="t", scheduled_at=None, queue="q"),
                          app=SimpleNamespace(tasks={}))
    assert asyncio.run(off(call_next, ctx, None)) == "result"
    registry = CollectorRegistry()
    on = jobmetrics.procrastinate.JobMetricsMiddleware(
        JobMetrics(registry=registry, multiprocess_dir=""))
    assert asyncio.run(on(call_next, object(), None)) == "result"  # no .job: not counted
    with pytest.raises(KeyError, match="from the task"):
        asyncio.run(on(failing, ctx, None))
    got = samples(scrape(registry))
    assert total(got, "t", "fail") == 1
    assert gauge(got, "running_task", "t") == 0
