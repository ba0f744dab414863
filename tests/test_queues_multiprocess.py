"""Queues, executors and worker pools in multi-process mode (MPTaskSeries, MP queue sizes)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics
from promcheck import promtool_check, samples, scrape

P = "harbor_jobservice_"


def test_queue_executor_and_pool_in_multiprocess_mode(tmp_path: Path) -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda job: job)
    for _ in range(3):
        q.put("gc")
    got = samples(scrape(m.registry))
    assert got[(P + "queue_size", (("queue", "jobs"),))] == 3.0
    assert got[(P + "pending_task", (("type", "gc"),))] == 3.0
    with m.instrument_executor(ThreadPoolExecutor(2)) as ex:
        while not q.empty():
            ex.submit(len, q.get()).result()

    async def main() -> None:
        aq = m.instrument_queue(asyncio.Queue(), name="aio", type_of=lambda job: "scan")
        for i in range(4):
            aq.put_nowait(i)
        async with m.worker_pool(aq, lambda item: None, workers=2):
            await asyncio.wait_for(aq.join(), 10)

    asyncio.run(main())
    text = scrape(m.registry)
    got = samples(text)
    assert got[(P + "pending_task", (("type", "gc"),))] == 0.0
    assert got[(P + "task_total", (("status", "success"), ("type", "len")))] == 3.0
    assert got[(P + "task_total", (("status", "success"), ("type", "scan")))] == 4.0
    assert got[(P + "running_task", (("type", "scan"),))] == 0.0
    assert got[(P + "pending_task", (("type", "scan"),))] == 0.0
    promtool_check(text)


def _wait_in_child(args: tuple) -> int:  # type: ignore[type-arg]
    """In a forked worker: three items, each waiting ``seconds`` in an instrumented queue."""
    directory, seconds = args
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=directory,
                   process_collectors=False)
    q = m.instrument_queue(queue.Queue(), name="jobs")
    for i in range(3):
        q.put(i)
        time.sleep(seconds)
        q.get()
    return os.getpid()


def test_queue_wait_merged_over_processes(tmp_path: Path) -> None:
    """queue_wait_seconds in multi-process mode: counts and quantiles over every process,
    kept after the processes exit."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pids = pool.map(_wait_in_child, [(str(tmp_path), 0.02), (str(tmp_path), 0.2)],
                        chunksize=1)
    assert len(set(pids)) == 2
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    text = scrape(m.registry)
    got = samples(text)
    jobs = (("queue", "jobs"),)
    assert got[(P + "queue_wait_seconds_count", jobs)] == 6.0
    assert 3 * 0.22 <= got[(P + "queue_wait_seconds_sum", jobs)] < 3 * 0.22 + 0.3
    # Sorted waits: three of about 0.02 s, three of about 0.2 s.
    for q, low in (("0.5", 0.02), ("0.9", 0.2)):
        est = got[(P + "queue_wait_seconds", (("quantile", q), *jobs))]
        assert low * 0.99 <= est <= low * 1.01 + 0.05, (q, est)
    assert (P + "queue_size", jobs) not in got  # both queues are gone with their processes
    promtool_check(text)
