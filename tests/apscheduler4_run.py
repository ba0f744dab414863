"""Real APScheduler 4.x schedulers running real jobs, instrumented; prints the scrape.

Run by tests/test_apscheduler4.py with the 4.x virtualenv's python (.venv-aps4), as
the main one has APScheduler 3.x. Lines before the scrape: ``# during <name> <value>``
(values read while two runs of one job overlap) and ``# <check> ok``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, List

import anyio
from apscheduler import AsyncScheduler, JobOutcome, JobReleased, Scheduler
from apscheduler.triggers.date import DateTrigger
from prometheus_client import CollectorRegistry, generate_latest

import jobmetrics.apscheduler
from jobmetrics import JobMetrics

registry = CollectorRegistry()
m = JobMetrics(registry=registry, multiprocess_dir="")
P = "harbor_jobservice_"


def value(name: str, **labels: str) -> float:
    v = registry.get_sample_value(P + name, labels)
    return 0.0 if v is None else v


def ok() -> str:
    return "ok"


def boom() -> None:
    raise ValueError("boom")


@m.task("inner")
def inner() -> str:
    return "inner"


release = threading.Event()
started = threading.Semaphore(0)


def block() -> None:
    started.release()
    if not release.wait(20):
        raise RuntimeError("not released")


def sync_scheduler() -> List[Any]:
    outcomes: List[Any] = []
    done = threading.Semaphore(0)

    def on_released(event: JobReleased) -> None:
        outcomes.append(event.outcome)
        done.release()

    def wait(n: int) -> None:
        for _ in range(n):
            if not done.acquire(timeout=20):
                raise RuntimeError("a job was not released")

    now = datetime.now(timezone.utc)
    with Scheduler() as scheduler:
        jobmetrics.apscheduler.instrument(scheduler, m)
        try:
            jobmetrics.apscheduler.instrument(scheduler, m)
        except ValueError as exc:
            assert "instrumented already" in str(exc)
            print("# twice ok")
        # After instrument(): its callback is delivered first.
        scheduler.subscribe(on_released, {JobReleased})
        scheduler.configure_task("ok", func=ok)
        scheduler.configure_task("boom", func=boom)
        scheduler.configure_task("inner_job", func=inner)
        scheduler.configure_task("late", func=ok, misfire_grace_time=1)
        scheduler.configure_task("on_time", func=ok)
        scheduler.configure_task("block", func=block, max_running_jobs=2)
        # Executors keep their class's name, and are still instances of it.
        from apscheduler.executors.thread import ThreadPoolJobExecutor

        pool = scheduler.job_executors["threadpool"]
        assert isinstance(pool, ThreadPoolJobExecutor), pool
        assert type(pool).__name__ == "ThreadPoolJobExecutor", type(pool)
        assert repr(pool).startswith("ThreadPoolJobExecutor("), repr(pool)
        print("# executors ok")
        scheduler.start_in_background()
        scheduler.add_job("ok")
        scheduler.add_job("ok")
        scheduler.add_job("boom")
        scheduler.add_job("inner_job")
        # Due 30 s ago with a 1 s grace time: released missed_start_deadline, never run.
        scheduler.add_schedule("late", DateTrigger(now - timedelta(seconds=30)))
        scheduler.add_schedule("on_time", DateTrigger(now))
        wait(6)
        # Two jobs of one task at once (max_running_jobs=2).
        scheduler.add_job("block")
        scheduler.add_job("block")
        for _ in range(2):
            assert started.acquire(timeout=20)
        print(f"# during running_task {value('running_task', type='block'):g}")
        release.set()
        wait(2)
        scheduler.stop()
        scheduler.wait_until_stopped()
    return outcomes


async def async_scheduler() -> List[Any]:
    outcomes: List[Any] = []
    running = anyio.Event()
    released = anyio.Event()

    async def aok() -> None:
        await asyncio.sleep(0)

    @m.task("ainner")
    async def ainner() -> None:
        await asyncio.sleep(0)

    async def forever() -> None:
        running.set()
        await asyncio.sleep(60)

    def on_released(event: JobReleased) -> None:
        outcomes.append(event.outcome)
        if len(outcomes) == 3:
            released.set()

    async with AsyncScheduler() as scheduler:
        jobmetrics.apscheduler.instrument(scheduler, m)
        scheduler.subscribe(on_released, {JobReleased})
        await scheduler.configure_task("aok", func=aok, job_executor="async")
        await scheduler.configure_task("ainner_job", func=ainner, job_executor="async")
        await scheduler.configure_task("forever", func=forever, job_executor="async")
        await scheduler.start_in_background()
        await scheduler.add_job("aok")
        await scheduler.add_job("ainner_job")
        await scheduler.add_job("forever")
        with anyio.fail_after(20):
            await running.wait()
        # Stopping cancels the running job: released cancelled.
        await scheduler.stop()
        await scheduler.wait_until_stopped()
        with anyio.fail_after(20):
            await released.wait()
    return outcomes


def serve(port: int) -> None:
    """``port=``: /metrics served from instrument() until the scheduler stops."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/metrics"
    with Scheduler() as scheduler:
        jobmetrics.apscheduler.instrument(scheduler, m, port=port)
        scheduler.start_in_background()
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"harbor_jobservice_info" in resp.read()
        print("# served ok")
        scheduler.stop()
        scheduler.wait_until_stopped()
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=10).close()
        except OSError:
            print("# closed ok")
            return
        threading.Event().wait(0.05)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
        return
    try:
        jobmetrics.apscheduler.instrument(object(), m)
    except TypeError as exc:
        assert "APScheduler 4.x Scheduler or AsyncScheduler" in str(exc), exc
        print("# type ok")
    outcomes = sync_scheduler()
    assert sorted(o.name for o in outcomes) == sorted(
        ["success"] * 6 + ["error", "missed_start_deadline"]), outcomes
    outcomes = asyncio.run(async_scheduler())
    assert sorted(o.name for o in outcomes) == ["cancelled", "success", "success"], outcomes
    assert JobOutcome.cancelled in outcomes
    sys.stdout.write(generate_latest(registry).decode())


if __name__ == "__main__":
    main()
