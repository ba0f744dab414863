"""An arq worker whose every job is counted: ``python examples/arq_worker.py REDIS_PORT``.

It enqueues a few jobs (one succeeds, one fails, one asks for a retry once), runs the
worker in burst mode until the queue is empty, and prints what a scrape shows. In a real
deployment, keep ``instrument(WorkerSettings)`` next to the settings and run
``JOBMETRICS_PORT=8001 arq arq_worker.WorkerSettings``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar, Dict, List

from arq import Retry, create_pool
from arq.connections import RedisSettings
from arq.worker import create_worker
from prometheus_client import generate_latest

import jobmetrics
import jobmetrics.arq


async def resize(ctx: Dict[str, Any], size: int) -> int:
    return size * 2


async def send_mail(ctx: Dict[str, Any], to: str) -> None:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)  # the mail server said "later"


async def broken(ctx: Dict[str, Any]) -> None:
    raise ValueError("no such image")


class WorkerSettings:
    functions: ClassVar[List[Any]] = [resize, send_mail, broken]
    poll_delay = 0.05


jobmetrics.arq.instrument(WorkerSettings)


async def main(port: int) -> None:
    redis = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(redis)
    await pool.enqueue_job("resize", 100)
    await pool.enqueue_job("send_mail", "ops@example.com")
    await pool.enqueue_job("broken")
    worker = create_worker(WorkerSettings, redis_settings=redis, burst=True,
                           handle_signals=False)
    await worker.main()
    await worker.close()
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
    text = generate_latest(jobmetrics.default_metrics().registry).decode()
    print("\n".join(line for line in text.splitlines()
                    if line.startswith(("harbor_jobservice_task_total",
                                        "harbor_jobservice_task_retries_total"))))
