"""instrument_executor: pending -> running -> done for thread and process pools."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from executor_jobs import fail, nap, square
from jobmetrics import JobMetrics, Stopped
from promcheck import promtool_check, scrape, value

P = "harbor_jobservice_"


def state(registry: CollectorRegistry, task_type: str) -> tuple[float | None, ...]:
    return (value(registry, P + "pending_task", type=task_type),
            value(registry, P + "running_task", type=task_type))


def total(registry: CollectorRegistry, task_type: str, status: str) -> float | None:
    return value(registry, P + "task_total", type=task_type, status=status)


def wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_gated_thread_pool(m: JobMetrics, registry: CollectorRegistry) -> None:
    gate = threading.Event()
    started = threading.Semaphore(0)

    def job(i: int) -> int:
        started.release()
        gate.wait(10)
        if i == 4:
            raise RuntimeError("boom")
        if i == 5:
            raise Stopped()
        return i

    ex = m.instrument_executor(ThreadPoolExecutor(2))
    assert isinstance(ex, ThreadPoolExecutor)
    futures = [ex.submit(job, i) for i in range(6)]
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    assert state(registry, "job") == (4.0, 2.0)
    gate.set()
    cf.wait(futures, timeout=10)
    assert [f.exception() is None for f in futures] == [True] * 4 + [False] * 2
    assert isinstance(futures[4].exception(), RuntimeError)
    assert [f.result() for f in futures[:4]] == [0, 1, 2, 3]
    wait_for(lambda: state(registry, "job") == (0.0, 0.0))
    assert total(registry, "job", "success") == 4.0
    assert total(registry, "job", "fail") == 1.0
    assert total(registry, "job", "stop") == 1.0
    assert value(registry, P + "task_process_time_seconds_count", type="job",
                 status="success") == 4.0
    ex.shutdown()
    promtool_check(scrape(registry))


def test_cancelled_futures_leave_no_pending(m: JobMetrics, registry: CollectorRegistry) -> None:
    gate = threading.Event()
    ex = m.instrument_executor(ThreadPoolExecutor(1))
    first = ex.submit(gate.wait, 10)
    queued = [ex.submit(square, i) for i in range(3)]
    wait_for(lambda: first.running())
    assert state(registry, "square") == (3.0, 0.0)
    assert queued[0].cancel() and queued[1].cancel()
    assert state(registry, "square") == (1.0, 0.0)
    gate.set()
    assert queued[2].result(timeout=10) == 4
    wait_for(lambda: state(registry, "square") == (0.0, 0.0))
    assert total(registry, "square", "success") == 1.0
    assert total(registry, "square", "stop") == 0.0
    ex.shutdown()


def test_shutdown_cancel_futures(m: JobMetrics, registry: CollectorRegistry) -> None:
    gate = threading.Event()
    ex = m.instrument_executor(ThreadPoolExecutor(1))
    ex.submit(gate.wait, 10)
    for i in range(5):
        ex.submit(square, i)
    assert state(registry, "square") == (5.0, 0.0)
    threading.Timer(0.05, gate.set).start()
    ex.shutdown(wait=True, cancel_futures=True)
    assert state(registry, "square") == (0.0, 0.0)
    assert total(registry, "square", "success") == 0.0


def test_submit_after_shutdown_raises_and_leaves_nothing(
        m: JobMetrics, registry: CollectorRegistry) -> None:
    ex = m.instrument_executor(ThreadPoolExecutor(1))
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    assert state(registry, "square") == (0.0, 0.0)


def test_map_and_with(m: JobMetrics, registry: CollectorRegistry) -> None:
    with m.instrument_executor(ThreadPoolExecutor(3)) as ex:
        assert type(ex).__name__ == "ExecutorProxy"
        assert isinstance(ex, ThreadPoolExecutor)
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        assert list(ex.map(pow, [2, 3], [3, 2], timeout=10)) == [8, 9]
        assert ex.submit(functools.partial(square, 3)).result() == 9
    assert total(registry, "square", "success") == 11.0
    assert total(registry, "pow", "success") == 2.0
    assert state(registry, "square") == (0.0, 0.0)


def test_decorated_task_counted_once(m: JobMetrics, registry: CollectorRegistry) -> None:
    @m.task("replication")
    def replicate(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    with m.instrument_executor(ThreadPoolExecutor(2)) as ex:
        assert [ex.submit(replicate, i).result() for i in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            ex.submit(replicate, -1).result()
    assert total(registry, "replication", "success") == 3.0
    assert total(registry, "replication", "fail") == 1.0
    assert state(registry, "replication") == (0.0, 0.0)
    assert value(registry, P + "task_total", type="replicate", status="success") is None


def test_type_override(m: JobMetrics, registry: CollectorRegistry) -> None:
    with m.instrument_executor(ThreadPoolExecutor(1), type="scan") as ex:
        ex.submit(square, 2).result()
    assert total(registry, "scan", "success") == 1.0
    with pytest.raises(ValueError):
        m.instrument_executor(ThreadPoolExecutor(1), type="")
    with pytest.raises(TypeError):
        m.instrument_executor(object())


def test_disabled_returns_the_executor(registry: CollectorRegistry) -> None:
    off = JobMetrics(registry=registry, enabled=False)
    ex = ThreadPoolExecutor(1)
    assert off.instrument_executor(ex) is ex
    ex.shutdown()


def test_process_pool(m: JobMetrics, registry: CollectorRegistry) -> None:
    with m.instrument_executor(ProcessPoolExecutor(1)) as ex:
        assert isinstance(ex, ProcessPoolExecutor)
        assert ex.submit(square, 7).result(timeout=30) == 49
        assert list(ex.map(square, [1, 2, 3], chunksize=2)) == [1, 4, 9]
        with pytest.raises(ValueError, match="bad 1"):
            ex.submit(fail, 1).result(timeout=30)
        # One item executing in the child; the call queue holds 2 more (max_workers + 1),
        # and the parent counts those running too; the rest are pending.
        futures = [ex.submit(nap, 0.3) for _ in range(5)]
        wait_for(lambda: futures[0].running())
        pending, running = state(registry, "nap")
        assert (pending or 0) + (running or 0) == 5.0
        assert running is not None and 1.0 <= running <= 3.0
        cf.wait(futures, timeout=30)
    wait_for(lambda: state(registry, "nap") == (0.0, 0.0))
    assert total(registry, "square", "success") == 4.0
    assert total(registry, "fail", "fail") == 1.0
    assert total(registry, "nap", "success") == 5.0
    assert state(registry, "square") == (0.0, 0.0)


def test_process_pool_cancel(m: JobMetrics, registry: CollectorRegistry) -> None:
    ex = m.instrument_executor(ProcessPoolExecutor(1))
    futures = [ex.submit(nap, 0.2) for _ in range(6)]
    wait_for(lambda: futures[0].running())
    cancelled = sum(f.cancel() for f in futures)
    assert cancelled >= 2  # the call queue holds at most max_workers + 1 items
    ex.shutdown(wait=True)
    assert state(registry, "nap") == (0.0, 0.0)
    assert total(registry, "nap", "success") == 6.0 - cancelled


def test_decorated_method_keeps_its_type(m: JobMetrics, registry: CollectorRegistry) -> None:
    class Service:
        @m.task("gc")
        def collect(self, n: int) -> int:
            return n + 1

    svc = Service()
    with m.instrument_executor(ThreadPoolExecutor(1)) as ex:
        assert ex.submit(svc.collect, 1).result() == 2
    assert total(registry, "gc", "success") == 1.0
    assert value(registry, P + "task_total", type="collect", status="success") is None
