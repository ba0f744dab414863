"""Queues, executors and worker pools in multi-process mode (MPTaskSeries, MP queue sizes)."""

from __future__ import annotations

import asyncio
import queue
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
