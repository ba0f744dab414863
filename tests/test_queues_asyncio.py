"""The asyncio worker pool: pending/running exact, also under cancellation."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, List

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics, Stopped
from promcheck import promtool_check, scrape, value

P = "harbor_jobservice_"


def state(registry: CollectorRegistry, task_type: str) -> tuple[float | None, ...]:
    return (value(registry, P + "pending_task", type=task_type),
            value(registry, P + "running_task", type=task_type))


def total(registry: CollectorRegistry, task_type: str, status: str) -> float | None:
    return value(registry, P + "task_total", type=task_type, status=status)


def test_pool_with_typed_queue(m: JobMetrics, registry: CollectorRegistry) -> None:
    errors: List[Any] = []

    async def main() -> None:
        gate = asyncio.Event()
        q = m.instrument_queue(asyncio.Queue(), name="jobs", type_of=lambda job: job[0])

        async def handle(job: tuple[str, int]) -> None:
            await gate.wait()
            if job[1] == 4:
                raise RuntimeError("boom")
            if job[1] == 5:
                raise Stopped()

        for i in range(6):
            await q.put(("gc", i))
        assert state(registry, "gc") == (6.0, 0.0)
        async with m.worker_pool(q, handle, workers=2,
                                 on_error=lambda item, exc: errors.append(item)) as pool:
            assert pool.running
            await asyncio.sleep(0.01)
            assert state(registry, "gc") == (4.0, 2.0)
            assert value(registry, P + "queue_size", queue="jobs") == 4.0
            gate.set()
            await asyncio.wait_for(q.join(), 10)
            assert state(registry, "gc") == (0.0, 0.0)
        assert not pool.running

    asyncio.run(main())
    assert total(registry, "gc", "success") == 4.0
    assert total(registry, "gc", "fail") == 1.0
    assert total(registry, "gc", "stop") == 1.0
    assert errors == [("gc", 4), ("gc", 5)]
    promtool_check(scrape(registry))


def test_stop_cancels_running_handlers(m: JobMetrics, registry: CollectorRegistry) -> None:
    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="jobs", type_of=lambda job: "scan")

        async def handle(job: int) -> None:
            await asyncio.sleep(60)

        for i in range(5):
            q.put_nowait(i)
        pool = m.worker_pool(q, handle, workers=3).start()
        await asyncio.sleep(0.01)
        assert state(registry, "scan") == (2.0, 3.0)
        await pool.stop()
        assert state(registry, "scan") == (2.0, 0.0)
        assert total(registry, "scan", "stop") == 3.0
        # The items not taken are still in the queue, still pending.
        assert q.qsize() == 2
        pool2 = m.worker_pool(q, lambda job: None, workers=1).start()
        await asyncio.wait_for(q.join(), 10)
        await pool2.stop()
        assert state(registry, "scan") == (0.0, 0.0)
        assert total(registry, "scan", "success") == 2.0

    asyncio.run(main())


def test_idle_workers_cancelled_count_nothing(m: JobMetrics,
                                              registry: CollectorRegistry) -> None:
    async def main() -> None:
        async def handle(job: int) -> None:
            pass

        q = m.instrument_queue(asyncio.Queue(), name="idle")
        async with m.worker_pool(q, handle, workers=4):
            await asyncio.sleep(0.01)
        assert state(registry, "handle") == (None, None)
        assert total(registry, "handle", "stop") is None

    asyncio.run(main())


def test_plain_queue_and_decorated_handler(m: JobMetrics, registry: CollectorRegistry) -> None:
    seen: List[int] = []

    @m.task("replication")
    async def replicate(x: int) -> None:
        seen.append(x)

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue()
        for i in range(3):
            q.put_nowait(i)
        async with m.worker_pool(q, replicate, workers=2):
            await asyncio.wait_for(q.join(), 10)

    asyncio.run(main())
    assert sorted(seen) == [0, 1, 2]
    assert total(registry, "replication", "success") == 3.0  # counted once
    assert state(registry, "replication") == (0.0, 0.0)


def test_bad_arguments(m: JobMetrics) -> None:
    import queue

    with pytest.raises(TypeError):
        m.worker_pool(queue.Queue(), print)
    with pytest.raises(ValueError):
        m.worker_pool(asyncio.Queue(), print, workers=0)
    with pytest.raises(TypeError):
        m.worker_pool(asyncio.Queue(), "nope")  # type: ignore[arg-type]


def test_disabled_pool_still_works(registry: CollectorRegistry) -> None:
    off = JobMetrics(registry=registry, enabled=False)
    done: List[int] = []

    async def main() -> None:
        q = off.instrument_queue(asyncio.Queue(), name="jobs")
        q.put_nowait(1)
        async with off.worker_pool(q, done.append):
            await asyncio.wait_for(q.join(), 10)

    asyncio.run(main())
    assert done == [1]
    assert scrape(registry) == ""


def test_failures_log_one_line_each_and_stopped_none(
    m: JobMetrics, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async def handle(job: int) -> None:
        if job % 2:
            raise Stopped("operator")
        raise RuntimeError(f"registry down\nfor job {job}")

    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="logged", type_of=lambda job: "gc")
        for i in range(6):
            q.put_nowait(i)
        async with m.worker_pool(q, handle, workers=2):
            await asyncio.wait_for(q.join(), 10)

    caplog.set_level(logging.INFO, logger="jobmetrics")
    asyncio.run(main())
    assert total(registry, "gc", "fail") == 3.0
    assert total(registry, "gc", "stop") == 3.0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("jobmetrics")]
    assert sorted(lines) == [
        f"jobmetrics worker: handler failed on {i}: RuntimeError: registry down\\nfor job {i}"
        for i in (0, 2, 4)]
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="jobmetrics")
    asyncio.run(main())
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 3 and all(r.levelno == logging.DEBUG for r in tracebacks)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_handler_exit_is_counted_and_let_through(
    m: JobMetrics, registry: CollectorRegistry, exc_type: type
) -> None:
    async def handle(job: int) -> None:
        raise exc_type(3)

    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="exits", type_of=lambda job: "gc")
        q.put_nowait(1)
        async with m.worker_pool(q, handle, workers=2):
            await asyncio.wait_for(q.join(), 10)

    with pytest.raises(exc_type):
        asyncio.run(main())
    assert state(registry, "gc") == (0.0, 0.0)
    assert total(registry, "gc", "stop") == 1.0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
def test_handlers_own_cancelled_error_keeps_the_worker(
    m: JobMetrics, registry: CollectorRegistry
) -> None:
    async def handle(job: int) -> None:
        if job == 1:
            inner = asyncio.get_running_loop().create_future()
            inner.cancel()
            await inner  # a cancelled inner operation: CancelledError, the worker is fine

    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="own", type_of=lambda job: "scan")
        for i in range(5):
            q.put_nowait(i)
        pool = m.worker_pool(q, handle, workers=1).start()
        await asyncio.wait_for(q.join(), 10)  # the one worker took every item
        assert pool.running
        await asyncio.wait_for(pool.stop(), 10)  # a real shutdown still gets through

    asyncio.run(main())
    assert state(registry, "scan") == (0.0, 0.0)
    assert total(registry, "scan", "success") == 4.0
    assert total(registry, "scan", "stop") == 1.0
