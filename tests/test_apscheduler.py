"""jobmetrics.apscheduler on real APScheduler 3.x schedulers."""

from __future__ import annotations

import asyncio
import queue
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any, List

import pytest

pytest.importorskip("apscheduler")

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

import jobmetrics.apscheduler
from jobmetrics import JobMetrics
from promcheck import promtool_check, samples, scrape
from worker_support import run_example

P = "harbor_jobservice_"
DONE = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES


def count(text: str, type_: str, status: str) -> float:
    return samples(text).get(
        (P + "task_process_time_seconds_count", (("status", status), ("type", type_))), 0.0)


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((P + name, tuple(sorted(labels.items()))), 0.0)


def ok() -> str:
    return "ok"


def boom() -> None:
    raise ValueError("boom")


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_background_scheduler_runs_missed_and_overlapping() -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    inner = m.task("inner")(ok)
    events: queue.Queue[Any] = queue.Queue()
    release = threading.Event()
    started: queue.Queue[None] = queue.Queue()

    def block() -> None:
        started.put(None)
        assert release.wait(20)

    scheduler = BackgroundScheduler(timezone=timezone.utc)
    jobmetrics.apscheduler.instrument(scheduler, m)
    with pytest.raises(ValueError, match="instrumented already"):
        jobmetrics.apscheduler.instrument(scheduler, m)
    scheduler.add_listener(events.put, DONE)
    scheduler.start()
    try:
        def wait_events(n: int) -> List[Any]:
            return [events.get(timeout=10) for _ in range(n)]

        scheduler.add_job(ok, "date", run_date=now())
        scheduler.add_job(ok, "date", run_date=now())
        scheduler.add_job(boom, "date", run_date=now())
        scheduler.add_job(inner, "date", run_date=now(), name="outer")
        scheduler.add_job(ok, "date", run_date=now() - timedelta(seconds=30),
                          misfire_grace_time=1, name="late")
        wait_events(5)

        # Two runs of one job at once, then a third refused by max_instances.
        scheduler.add_job(block, "interval", hours=1, next_run_time=now(), id="o", name="block",
                          max_instances=2)
        started.get(timeout=10)
        scheduler.modify_job("o", next_run_time=now())
        started.get(timeout=10)
        during = scrape(registry)
        scheduler.modify_job("o", next_run_time=now())
        assert [e.code for e in wait_events(1)] == [EVENT_JOB_MAX_INSTANCES]
        release.set()
        wait_events(2)
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    text = scrape(registry)
    assert value(during, "running_task", type="block") == 2
    assert value(during, "pending_task", type="block") == 0
    assert count(text, "ok", "success") == 2
    assert count(text, "boom", "fail") == 1
    assert count(text, "inner", "success") == 1
    assert count(text, "outer", "success") == 0
    assert count(text, "late", "stop") == 1
    assert count(text, "late", "success") == 0
    assert count(text, "block", "success") == 2
    assert count(text, "block", "stop") == 1
    for t in ("ok", "boom", "inner", "outer", "late", "block"):
        assert value(text, "running_task", type=t) == 0
        assert value(text, "pending_task", type=t) == 0
    # Every run that started: ok x2, boom, outer, block x2.
    assert value(text, "queue_wait_seconds_count", queue="default") == 6
    promtool_check(text)


def test_asyncio_scheduler_coroutine_jobs() -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")

    async def aok() -> None:
        await asyncio.sleep(0)

    async def aboom() -> None:
        raise RuntimeError("boom")

    async def main() -> str:
        done: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        scheduler = AsyncIOScheduler(timezone=timezone.utc)
        jobmetrics.apscheduler.instrument(scheduler, m)
        scheduler.add_listener(lambda e: loop.call_soon_threadsafe(done.put_nowait, e), DONE)
        scheduler.start()
        scheduler.add_job(aok, "date", run_date=now(), name="aok")
        scheduler.add_job(aboom, "date", run_date=now(), name="aboom")
        for _ in range(2):
            await asyncio.wait_for(done.get(), 10)
        scheduler.shutdown(wait=False)
        return scrape(registry)

    text = asyncio.run(main())
    assert count(text, "aok", "success") == 1
    assert count(text, "aboom", "fail") == 1
    assert value(text, "running_task", type="aok") == 0
    assert value(text, "queue_wait_seconds_count", queue="default") == 2


def test_bad_targets() -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")
    with pytest.raises(TypeError, match=r"APScheduler 3\.x scheduler"):
        jobmetrics.apscheduler.instrument(object(), m)
    with pytest.raises(TypeError, match="metrics must be"):
        jobmetrics.apscheduler.instrument(BackgroundScheduler(), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.apscheduler.instrument(BackgroundScheduler(), m, port=-1)


def test_example_apscheduler_jobs() -> None:
    """docs/apscheduler.md: examples/apscheduler_jobs.py, as documented."""
    out = run_example("apscheduler_jobs.py")
    assert 'task_total{status="success",type="rotate_logs"} 1.0' in out
    assert 'task_total{status="fail",type="sync_mirror"} 1.0' in out
    assert 'task_total{status="stop",type="nightly_report"} 1.0' in out
    assert 'queue_wait_seconds_count{queue="default"} 2.0' in out


def test_uncoalesced_run_times_each_counted() -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    events: queue.Queue[Any] = queue.Queue()
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    jobmetrics.apscheduler.instrument(scheduler, m)
    scheduler.add_listener(events.put, DONE)
    scheduler.start()
    try:
        # Due at -35, -25, -15 and -5 s; a grace of 20 s misses the first two.
        scheduler.add_job(ok, "interval", seconds=10, coalesce=False,
                          misfire_grace_time=20, next_run_time=now() - timedelta(seconds=35))
        codes = sorted(events.get(timeout=10).code for _ in range(4))
    finally:
        scheduler.shutdown(wait=True)
    assert codes == sorted([EVENT_JOB_MISSED] * 2 + [EVENT_JOB_EXECUTED] * 2)
    text = scrape(registry)
    assert count(text, "ok", "success") == 2
    assert count(text, "ok", "stop") == 2
    assert value(text, "pending_task", type="ok") == 0
    assert value(text, "queue_wait_seconds_count", queue="default") == 2
    # The lags of the runs at -15 and -5 s, not of the missed ones.
    assert 20 <= value(text, "queue_wait_seconds_sum", queue="default") < 40


def test_port_serves_until_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    port = free_port()
    monkeypatch.setenv("JOBMETRICS_ADDR", "127.0.0.1")
    monkeypatch.setenv("JOBMETRICS_PORT", str(port))
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    jobmetrics.apscheduler.instrument(scheduler, m)
    scheduler.start()
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert b"harbor_jobservice_info" in resp.read()
    scheduler.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=10)
    monkeypatch.setenv("JOBMETRICS_PORT", "http")
    with pytest.raises(ValueError, match="JOBMETRICS_PORT"):
        jobmetrics.apscheduler.instrument(BackgroundScheduler(), m)
