"""instrument_queue: sizes at scrape time, weak hold, pending by type, wait time."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import queue
import threading

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics
from promcheck import promtool_check, samples, scrape, value

SIZE = "harbor_jobservice_queue_size"
PENDING = "harbor_jobservice_pending_task"
WAIT = "harbor_jobservice_queue_wait_seconds"


def size(registry: CollectorRegistry, name: str) -> float | None:
    return value(registry, SIZE, queue=name)


@pytest.mark.parametrize("make", [queue.Queue, queue.LifoQueue, queue.PriorityQueue,
                                  queue.SimpleQueue])
def test_sizes_after_puts_and_gets(m: JobMetrics, registry: CollectorRegistry,
                                   make: type) -> None:
    raw = make()
    q = m.instrument_queue(raw, name="jobs")
    assert isinstance(q, make)
    assert size(registry, "jobs") == 0.0
    q.put(1)
    q.put_nowait(2)
    raw.put(3)  # the raw queue counts too: the size is read from it
    assert size(registry, "jobs") == 3.0
    assert sorted([q.get(), q.get_nowait()]) in ([1, 2], [1, 3], [2, 3])
    assert size(registry, "jobs") == 1.0
    raw.get()
    assert size(registry, "jobs") == 0.0
    with pytest.raises(queue.Empty):
        q.get_nowait()
    promtool_check(scrape(registry))


def test_every_method_passes_through(m: JobMetrics) -> None:
    raw: queue.Queue[int] = queue.Queue(maxsize=1)
    q = m.instrument_queue(raw, name="small")
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    assert q.full() and not q.empty() and q.qsize() == 1 and q.maxsize == 1
    assert q.get() == 1
    q.task_done()
    q.join()
    assert q.__wrapped__ is raw


def test_same_name_sums_and_two_names(m: JobMetrics, registry: CollectorRegistry) -> None:
    a = m.instrument_queue(queue.Queue(), name="shared")
    b = m.instrument_queue(queue.Queue(), name="shared")
    c = m.instrument_queue(queue.SimpleQueue(), name="other")
    a.put(1)
    b.put(1)
    b.put(2)
    c.put(0)
    assert size(registry, "shared") == 3.0
    assert size(registry, "other") == 1.0


def test_weak_hold(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(queue.Queue(), name="gone", type_of=lambda item: "scan")
    q.put("x")
    keep = m.instrument_queue(queue.Queue(), name="kept")
    assert size(registry, "gone") == 1.0
    del q
    gc.collect()
    assert size(registry, "gone") is None
    assert size(registry, "kept") == 0.0
    assert keep.qsize() == 0


def test_pending_follows_items_by_type(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda job: job["type"])
    jobs = [{"type": t} for t in ("gc", "gc", "scan")]
    for job in jobs:
        q.put(job)
    assert value(registry, PENDING, type="gc") == 2.0
    assert value(registry, PENDING, type="scan") == 1.0
    assert q.get() is jobs[0]
    assert value(registry, PENDING, type="gc") == 1.0
    # An item put on the raw queue was never counted: getting it changes nothing.
    q.__wrapped__.put({"type": "gc"})
    q.get()
    q.get()
    q.get()
    assert value(registry, PENDING, type="gc") == 0.0
    assert value(registry, PENDING, type="scan") == 0.0
    text = scrape(registry)
    assert samples(text)[(WAIT + "_count", (("queue", "jobs"),))] == 3.0
    promtool_check(text)


def test_refused_put_leaves_no_pending(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(queue.Queue(maxsize=1), name="full", type_of=lambda item: "gc")
    q.put(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    assert value(registry, PENDING, type="gc") == 1.0


def test_same_object_put_twice(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda item: "gc")
    item = object()
    q.put(item)
    q.put(item)
    assert value(registry, PENDING, type="gc") == 2.0
    q.get()
    q.get()
    assert value(registry, PENDING, type="gc") == 0.0


def test_type_of_failure_never_reaches_the_caller(m: JobMetrics,
                                                  registry: CollectorRegistry) -> None:
    def bad(item: object) -> str:
        raise KeyError("no type")

    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=bad)
    q.put(1)
    assert q.get() == 1
    assert size(registry, "jobs") == 0.0


def test_threads_exact(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda item: "scan")

    def produce() -> None:
        for i in range(500):
            q.put(i)

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(registry, PENDING, type="scan") == 2000.0
    assert size(registry, "jobs") == 2000.0
    got = []

    def consume() -> None:
        for _ in range(500):
            got.append(q.get())

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2000
    assert value(registry, PENDING, type="scan") == 0.0
    assert value(registry, WAIT + "_count", queue="jobs") == 2000.0


def test_asyncio_queue(m: JobMetrics, registry: CollectorRegistry) -> None:
    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(), name="aio", type_of=lambda item: "gc")
        assert isinstance(q, asyncio.Queue)
        await q.put(1)
        q.put_nowait(2)
        q.__wrapped__.put_nowait(3)
        assert size(registry, "aio") == 3.0
        assert value(registry, PENDING, type="gc") == 2.0
        assert await q.get() == 1
        assert q.get_nowait() == 2
        assert q.get_nowait() == 3
        assert size(registry, "aio") == 0.0
        assert value(registry, PENDING, type="gc") == 0.0

    asyncio.run(main())


def test_asyncio_put_cancelled_on_full_queue(m: JobMetrics,
                                             registry: CollectorRegistry) -> None:
    async def main() -> None:
        q = m.instrument_queue(asyncio.Queue(maxsize=1), name="aio",
                               type_of=lambda item: "gc")
        await q.put(1)
        blocked = asyncio.ensure_future(q.put(2))
        await asyncio.sleep(0)
        assert value(registry, PENDING, type="gc") == 2.0  # accepted, waiting for room
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert value(registry, PENDING, type="gc") == 1.0
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait(3)
        assert value(registry, PENDING, type="gc") == 1.0

    asyncio.run(main())


def test_multiprocessing_queue(m: JobMetrics, registry: CollectorRegistry) -> None:
    raw = multiprocessing.Queue()
    q = m.instrument_queue(raw, name="mp")
    assert isinstance(q, type(raw))
    q.put("a")
    q.put("b")
    # The feeder thread moves items into the pipe: qsize counts them at once.
    assert size(registry, "mp") == 2.0
    assert q.get(timeout=5) == "a"
    assert q.get(timeout=5) == "b"
    assert size(registry, "mp") == 0.0
    with pytest.raises(ValueError, match="multiprocessing"):
        m.instrument_queue(multiprocessing.Queue(), name="mp2", type_of=str)
    q.close()
    q.join_thread()


def test_multiprocessing_simple_queue(m: JobMetrics, registry: CollectorRegistry) -> None:
    q = m.instrument_queue(multiprocessing.SimpleQueue(), name="simple")
    assert size(registry, "simple") == 0.0
    q.put(1)
    assert size(registry, "simple") == 1.0  # SimpleQueue can only say empty or not
    assert q.get() == 1


def test_bad_input(m: JobMetrics) -> None:
    with pytest.raises(TypeError, match=r"queue\.Queue"):
        m.instrument_queue([], name="x")
    with pytest.raises(ValueError, match="name"):
        m.instrument_queue(queue.Queue(), name="")
    with pytest.raises(TypeError, match="type_of"):
        m.instrument_queue(queue.Queue(), name="x", type_of="gc")  # type: ignore[arg-type]
    q = m.instrument_queue(queue.Queue(), name="x")
    with pytest.raises(TypeError, match="already instrumented"):
        m.instrument_queue(q, name="y")


def test_disabled_returns_the_queue_itself(registry: CollectorRegistry) -> None:
    off = JobMetrics(registry=registry, enabled=False)
    raw: queue.Queue[int] = queue.Queue()
    assert off.instrument_queue(raw, name="jobs", type_of=str) is raw
    assert scrape(registry) == ""


def test_histogram_wait(registry: CollectorRegistry) -> None:
    m = JobMetrics(registry=registry, process_collectors=False, task_duration="histogram",
                   buckets=(0.1, 1.0))
    q = m.instrument_queue(queue.Queue(), name="jobs")
    q.put(1)
    q.get()
    text = scrape(registry)
    assert samples(text)[(WAIT + "_bucket", (("le", "+Inf"), ("queue", "jobs")))] == 1.0
    promtool_check(text)


def test_weak_hold_asyncio_and_multiprocessing(m: JobMetrics, registry: CollectorRegistry) -> None:
    aq = m.instrument_queue(asyncio.Queue(), name="aio", type_of=lambda item: "gc")
    aq.put_nowait(1)
    mq = m.instrument_queue(multiprocessing.SimpleQueue(), name="mp")
    assert size(registry, "aio") == 1.0 and size(registry, "mp") == 0.0
    del aq, mq
    gc.collect()
    assert size(registry, "aio") is None
    assert size(registry, "mp") is None


def test_proxy_sent_to_a_spawned_process_arrives_as_the_queue(m: JobMetrics,
                                                              registry: CollectorRegistry) -> None:
    ctx = multiprocessing.get_context("spawn")
    q = m.instrument_queue(ctx.Queue(), name="spawned")
    proc = ctx.Process(target=_child_put, args=(q,))
    proc.start()
    assert q.get(timeout=60) == "from the child"
    proc.join(60)
    assert proc.exitcode == 0
    assert size(registry, "spawned") == 0.0


def _child_put(q: object) -> None:
    q.put("from the child")  # type: ignore[attr-defined]
