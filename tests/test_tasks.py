"""@m.task and m.track_task through the public API, with exact values."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from typing import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics, Stopped
from promcheck import value

TOTAL = "harbor_jobservice_task_total"
RUNNING = "harbor_jobservice_running_task"
RATE = "harbor_jobservice_task_success_rate"
PTIME = "harbor_jobservice_task_process_time_seconds"


def total(registry: CollectorRegistry, task_type: str, status: str) -> float | None:
    return value(registry, TOTAL, type=task_type, status=status)


def counts(registry: CollectorRegistry, task_type: str) -> tuple[float | None, ...]:
    return tuple(total(registry, task_type, s) for s in ("success", "fail", "stop"))


# -- statuses ----------------------------------------------------------------------


def test_sync_statuses_and_unchanged_results(m: JobMetrics, registry) -> None:
    boom = ValueError("boom")

    @m.task("replication")
    def replicate(x: int, fail: bool = False, stop: bool = False) -> int:
        if fail:
            raise boom
        if stop:
            raise Stopped("operator")
        return x * 2

    assert replicate(21) == 42
    assert replicate(x=1) == 2
    with pytest.raises(ValueError) as info:
        replicate(1, fail=True)
    assert info.value is boom
    with pytest.raises(Stopped):
        replicate(1, stop=True)
    assert counts(registry, "replication") == (2.0, 1.0, 1.0)
    assert value(registry, PTIME + "_count", type="replication", status="success") == 2.0
    assert value(registry, RUNNING, type="replication") == 0.0


def test_type_forms(m: JobMetrics, registry) -> None:
    @m.task
    def plain() -> None: ...

    @m.task()
    def empty_call() -> None: ...

    @m.task(type="named")
    def by_keyword() -> None: ...

    for f in (plain, empty_call, by_keyword):
        f()
    assert total(registry, "plain", "success") == 1.0
    assert total(registry, "empty_call", "success") == 1.0
    assert total(registry, "named", "success") == 1.0


def test_known_types_are_exposed_at_zero_before_any_call(m: JobMetrics, registry) -> None:
    @m.task("gc")
    def gc() -> None: ...

    assert counts(registry, "gc") == (0.0, 0.0, 0.0)
    assert value(registry, RUNNING, type="gc") == 0.0
    assert math.isnan(value(registry, RATE, type="gc"))  # type: ignore[arg-type]


def test_process_time_is_measured(m: JobMetrics, registry) -> None:
    @m.task("sleepy")
    def sleepy() -> None:
        time.sleep(0.05)

    sleepy()
    got = value(registry, PTIME + "_sum", type="sleepy", status="success")
    assert got is not None and 0.05 <= got < 1.0
    q50 = value(registry, PTIME, type="sleepy", status="success", quantile="0.5")
    assert q50 is not None and abs(q50 - got) <= 0.01 * got + 1e-9


async def _gather(*aws):  # type: ignore[no-untyped-def]
    return await asyncio.gather(*aws, return_exceptions=True)


def test_async_statuses(m: JobMetrics, registry) -> None:
    boom = KeyError("k")

    @m.task("scan")
    async def scan(n: int) -> int:
        await asyncio.sleep(0)
        if n == 1:
            raise boom
        if n == 2:
            raise Stopped()
        return n

    results = asyncio.run(_gather(scan(0), scan(1), scan(2), scan(5)))
    assert results[0] == 0 and results[3] == 5
    assert results[1] is boom
    assert isinstance(results[2], Stopped)
    assert counts(registry, "scan") == (2.0, 1.0, 1.0)


def test_cancellation_is_stop_and_running_returns_to_zero(m: JobMetrics, registry) -> None:
    started = []

    @m.task("long")
    async def long() -> None:
        started.append(1)
        await asyncio.sleep(60)

    async def main() -> None:
        t = asyncio.ensure_future(long())
        while not started:
            await asyncio.sleep(0)
        assert value(registry, RUNNING, type="long") == 1.0
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert counts(registry, "long") == (0.0, 0.0, 1.0)
    assert value(registry, RUNNING, type="long") == 0.0


def test_running_gauge_is_exact_during_a_run(m: JobMetrics, registry) -> None:
    inside = threading.Event()
    release = threading.Event()

    @m.task("held")
    def held() -> None:
        inside.set()
        release.wait(10)

    t = threading.Thread(target=held)
    t.start()
    assert inside.wait(10)
    assert value(registry, RUNNING, type="held") == 1.0
    release.set()
    t.join()
    assert value(registry, RUNNING, type="held") == 0.0


# -- generators --------------------------------------------------------------------


def test_generator_runs_until_exhausted(m: JobMetrics, registry) -> None:
    @m.task("chunks")
    def chunks(n: int) -> Iterator[int]:
        received = yield 0
        assert received == "hello"
        yield from range(1, n)
        return

    g = chunks(3)
    assert value(registry, RUNNING, type="chunks") == 0.0  # not started yet
    assert next(g) == 0
    assert value(registry, RUNNING, type="chunks") == 1.0
    assert g.send("hello") == 1
    assert list(g) == [2]
    assert counts(registry, "chunks") == (1.0, 0.0, 0.0)
    assert value(registry, RUNNING, type="chunks") == 0.0


def test_generator_closed_early_is_stop(m: JobMetrics, registry) -> None:
    closed = []

    @m.task("gen")
    def gen() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    g = gen()
    assert next(g) == 1
    g.close()
    assert closed == [True]
    assert counts(registry, "gen") == (0.0, 0.0, 1.0)
    assert value(registry, RUNNING, type="gen") == 0.0


def test_generator_exception_and_throw(m: JobMetrics, registry) -> None:
    @m.task("gen")
    def gen() -> Iterator[int]:
        try:
            yield 1
        except KeyError:
            yield 99
        raise RuntimeError("done badly")

    g = gen()
    next(g)
    assert g.throw(KeyError("x")) == 99
    with pytest.raises(RuntimeError, match="done badly"):
        next(g)
    assert counts(registry, "gen") == (0.0, 1.0, 0.0)


def test_async_generator(m: JobMetrics, registry) -> None:
    @m.task("stream")
    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            got = yield i
            if got == "skip":
                yield -1

    async def main() -> list[int]:
        out = [x async for x in stream(3)]
        g = stream(5)
        assert await g.__anext__() == 0
        assert await g.asend("skip") == -1
        assert value(registry, RUNNING, type="stream") == 1.0
        await g.aclose()
        return out

    assert asyncio.run(main()) == [0, 1, 2]
    assert counts(registry, "stream") == (1.0, 0.0, 1.0)
    assert value(registry, RUNNING, type="stream") == 0.0


def test_async_generator_failure_and_athrow(m: JobMetrics, registry) -> None:
    @m.task("stream")
    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
        except ValueError:
            yield 2
        raise OSError("disk")

    async def main() -> None:
        g = stream()
        assert await g.__anext__() == 1
        assert await g.athrow(ValueError("v")) == 2
        with pytest.raises(OSError, match="disk"):
            await g.__anext__()

    asyncio.run(main())
    assert counts(registry, "stream") == (0.0, 1.0, 0.0)


# -- what the wrapper preserves ---------------------------------------------------


def test_wrapper_preserves_identity(m: JobMetrics) -> None:
    def plain(a: int, b: str = "x", *args: int, c: float, **kw: object) -> str:
        """Plain doc."""
        return b

    async def coro(a: int) -> int:
        """Coro doc."""
        return a

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    for fn in (plain, coro, gen, agen):
        wrapped = m.task(fn)
        assert wrapped.__name__ == fn.__name__
        assert wrapped.__doc__ == fn.__doc__
        assert wrapped.__wrapped__ is fn
        assert inspect.signature(wrapped) == inspect.signature(fn)
        assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(fn)
        assert inspect.isgeneratorfunction(wrapped) == inspect.isgeneratorfunction(fn)
        assert inspect.isasyncgenfunction(wrapped) == inspect.isasyncgenfunction(fn)
        assert asyncio.iscoroutinefunction(wrapped) == asyncio.iscoroutinefunction(fn)
        assert isinstance(wrapped, type(fn))


def test_methods_classmethods_staticmethods(m: JobMetrics, registry) -> None:
    class Worker:
        factor = 3

        def __init__(self) -> None:
            self.n = 2

        @m.task("method")
        def run(self, x: int) -> int:
            return self.n * x

        @m.task("cls")
        @classmethod
        def make(cls, x: int) -> int:
            return cls.factor * x

        @m.task("static")
        @staticmethod
        def pure(x: int) -> int:
            return x + 1

        @m.task("amethod")
        async def arun(self) -> int:
            return self.n

    w = Worker()
    assert w.run(5) == 10
    assert Worker.run(w, 1) == 2
    assert Worker.make(2) == 6
    assert w.make(1) == 3
    assert Worker.pure(1) == 2 and w.pure(2) == 3
    assert asyncio.run(w.arun()) == 2
    assert inspect.iscoroutinefunction(w.arun)
    assert total(registry, "method", "success") == 2.0
    assert total(registry, "cls", "success") == 2.0
    assert total(registry, "static", "success") == 2.0
    assert total(registry, "amethod", "success") == 1.0
    assert inspect.signature(w.run) == inspect.signature(lambda x: None).replace(
        parameters=[inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                      annotation="int")],
        return_annotation="int",
    )


def test_default_type_of_a_classmethod_is_its_name(m: JobMetrics, registry) -> None:
    class Jobs:
        @m.task
        @classmethod
        def vacuum(cls) -> str:
            return cls.__name__

    assert Jobs.vacuum() == "Jobs"
    assert total(registry, "vacuum", "success") == 1.0


# -- track_task ----------------------------------------------------------------------


def test_track_task_with_and_async_with(m: JobMetrics, registry) -> None:
    with m.track_task("gc") as handle:
        assert handle.type == "gc"
        assert value(registry, RUNNING, type="gc") == 1.0
    with pytest.raises(ZeroDivisionError), m.track_task("gc"):
        1 / 0  # noqa: B018
    with m.track_task("gc") as handle:
        handle.mark_stopped()

    async def main() -> None:
        async with m.track_task("gc"):
            await asyncio.sleep(0)
        async with m.track_task("gc") as h:
            h.mark_stopped()

    asyncio.run(main())
    assert counts(registry, "gc") == (2.0, 1.0, 2.0)
    assert value(registry, RUNNING, type="gc") == 0.0


def test_track_task_cancelled(m: JobMetrics, registry) -> None:
    async def job() -> None:
        async with m.track_task("sync"):
            await asyncio.sleep(60)

    async def main() -> None:
        t = asyncio.ensure_future(job())
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert counts(registry, "sync") == (0.0, 0.0, 1.0)
    assert value(registry, RUNNING, type="sync") == 0.0


# -- success rate --------------------------------------------------------------------


def test_success_rate_ignores_stop_and_empty_window_is_nan(registry) -> None:
    m = JobMetrics(registry=registry, success_rate_window=0.3, age_buckets=3,
                   process_collectors=False)

    @m.task("rep")
    def rep(outcome: str) -> None:
        if outcome == "fail":
            raise RuntimeError
        if outcome == "stop":
            raise Stopped

    for outcome in ["ok", "ok", "ok", "fail", "stop", "stop"]:
        try:
            rep(outcome)
        except (RuntimeError, Stopped):
            pass
    assert value(registry, RATE, type="rep") == 0.75
    time.sleep(0.35)  # the whole window has passed
    assert math.isnan(value(registry, RATE, type="rep"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        rep("fail")
    assert value(registry, RATE, type="rep") == 0.0
    assert counts(registry, "rep") == (3.0, 2.0, 2.0)  # totals never age


def test_quantiles_age_out_but_count_and_sum_do_not(registry) -> None:
    m = JobMetrics(registry=registry, max_age=0.3, age_buckets=3, process_collectors=False)
    with m.track_task("t"):
        pass
    assert not math.isnan(value(registry, PTIME, type="t", status="success", quantile="0.5"))  # type: ignore[arg-type]
    time.sleep(0.35)
    assert math.isnan(value(registry, PTIME, type="t", status="success", quantile="0.5"))  # type: ignore[arg-type]
    assert value(registry, PTIME + "_count", type="t", status="success") == 1.0


# -- concurrency ------------------------------------------------------------------------


def test_exact_counts_from_8_threads(m: JobMetrics, registry) -> None:
    @m.task("t")
    def work(i: int) -> None:
        if i % 10 == 0:
            raise ValueError
        if i % 10 == 1:
            raise Stopped

    def loop() -> None:
        for i in range(5000):
            try:
                work(i)
            except (ValueError, Stopped):
                pass

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts(registry, "t") == (32000.0, 4000.0, 4000.0)
    assert value(registry, PTIME + "_count", type="t", status="success") == 32000.0
    assert value(registry, RUNNING, type="t") == 0.0
    assert value(registry, RATE, type="t") == pytest.approx(32000 / 36000)


def test_exact_counts_from_1000_asyncio_tasks(m: JobMetrics, registry) -> None:
    @m.task("a")
    async def work(i: int, gate: asyncio.Event) -> int:
        await gate.wait()
        if i % 4 == 0:
            raise ValueError
        return i

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(work(i, gate)) for i in range(1000)]
        await asyncio.sleep(0.05)
        assert value(registry, RUNNING, type="a") == 1000.0
        for t in tasks[:100]:
            t.cancel()
        gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    # 100 cancelled (stop); of the other 900, those with i % 4 == 0 fail.
    fails = sum(1 for i in range(100, 1000) if i % 4 == 0)
    assert counts(registry, "a") == (900.0 - fails, float(fails), 100.0)
    assert value(registry, RUNNING, type="a") == 0.0


# -- a failure inside jobmetrics never reaches the task ------------------------------


def test_internal_failure_is_logged_once_and_swallowed(
    m: JobMetrics, registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import jobmetrics.window

    def broken(self, good, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("metrics bug")

    monkeypatch.setattr(jobmetrics.window.Window, "add", broken)
    monkeypatch.setattr(jobmetrics._errors, "_reported", set())

    @m.task("t")
    def work() -> int:
        return 5

    with caplog.at_level(logging.ERROR, logger="jobmetrics"):
        assert [work() for _ in range(3)] == [5, 5, 5]
    assert len([r for r in caplog.records if "failed; jobmetrics goes on" in r.getMessage()]) == 1
    # The scrape still works.
    assert value(registry, RUNNING, type="t") == 0.0


# -- bad use -------------------------------------------------------------------------------


def test_bad_task_types(m: JobMetrics) -> None:
    with pytest.raises(ValueError, match="task type"):
        m.task("")
    with pytest.raises(TypeError, match="task type"):
        m.track_task(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="once"):
        m.task("a", type="b")
    with pytest.raises(TypeError, match="callable"):
        m.task(type="x")(42)


def test_celery_decorator_order(m: JobMetrics, registry: CollectorRegistry) -> None:
    """Over a Celery task, @m.task would instrument only direct calls, never the worker's
    runs: a clear TypeError. Under @app.task (or @shared_task) it is what the worker runs."""
    celery = pytest.importorskip("celery")
    app = celery.Celery("t", set_as_current=False)

    def one() -> int:
        return 1

    with pytest.raises(TypeError, match=r"put @m\.task under @app\.task"):
        m.task("gc")(app.task(one))
    with pytest.raises(TypeError, match=r"put @m\.task under @app\.task"):
        m.task("gc")(celery.shared_task(one))

    @app.task
    @m.task("gc")
    def collect(n: int) -> int:
        return n * 2

    assert collect.name.endswith(".collect")  # Celery names it after the function
    assert collect.apply(args=(21,)).get() == 42  # as a worker runs it
    assert value(registry, "harbor_jobservice_task_total", type="gc", status="success") == 1


def test_retries_are_counted_per_type(m: JobMetrics, registry) -> None:
    state = m.task_series("sync")
    assert state is not None
    assert value(registry, "harbor_jobservice_task_retries_total", type="sync") == 0.0
    for _ in range(2):  # an attempt that will be retried: fail, and one retry
        start = state.begin()
        state.retried()
        state.end(1, start)
    assert value(registry, "harbor_jobservice_task_retries_total", type="sync") == 2.0
    assert counts(registry, "sync") == (0.0, 2.0, 0.0)


def test_a_class_is_refused(m: JobMetrics) -> None:
    class Job:
        def run(self) -> None:
            pass

    with pytest.raises(TypeError, match="decorates a function or method, got the class 'Job'"):
        m.task(Job)
    with pytest.raises(TypeError, match="got the class"):
        m.task("job")(Job)


def test_wrong_arguments_raise_at_the_call_for_every_kind(m: JobMetrics, registry) -> None:
    @m.task("gen")
    def gen(n: int) -> Iterator[int]:
        yield n

    @m.task("coro")
    async def coro(n: int) -> int:
        return n

    @m.task("agen")
    async def agen(n: int) -> AsyncIterator[int]:
        yield n

    for fn in (gen, coro, agen):
        with pytest.raises(TypeError):
            fn()  # type: ignore[call-arg]
    for t in ("gen", "coro", "agen"):
        assert counts(registry, t) == (0.0, 0.0, 0.0)
        assert value(registry, RUNNING, type=t) == 0.0


def test_a_reused_handle_forgets_mark_stopped(m: JobMetrics, registry) -> None:
    handle = m.track_task("sync")
    with handle:
        handle.mark_stopped()
    with handle:
        pass
    assert counts(registry, "sync") == (1.0, 0.0, 1.0)
