"""A SAQ worker whose every job is counted: ``python examples/saq_worker.py REDIS_PORT``.

It enqueues a few jobs (one succeeds, one fails, one fails once and succeeds on its
retry), runs the worker in burst mode until the queue is empty, and prints what a scrape
shows. In a real deployment, keep ``instrument()`` next to the settings and run
``JOBMETRICS_PORT=8001 saq saq_worker.settings --workers 4``: one ``/metrics`` for the
four processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Dict

from prometheus_client import generate_latest
from saq import Queue, Worker

import jobmetrics
import jobmetrics.saq


async def resize(ctx: Dict[str, Any], *, size: int) -> int:
    return size * 2


async def send_mail(ctx: Dict[str, Any], *, to: str) -> None:
    if ctx["job"].attempts == 1:
        raise ConnectionError("the mail server said: later")  # retried (retries=2)


async def broken(ctx: Dict[str, Any]) -> None:
    raise ValueError("no such image")


settings = jobmetrics.saq.instrument({
    "queue": Queue.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379")),
    "functions": [resize, send_mail, broken],
    "concurrency": 4,
})


async def main(port: int) -> None:
    queue = Queue.from_url(f"redis://127.0.0.1:{port}")
    await queue.connect()
    await queue.enqueue("resize", size=100)
    await queue.enqueue("send_mail", to="ops@example.com", retries=2)
    await queue.enqueue("broken")
    worker = Worker(**{**settings, "queue": queue}, burst=True, dequeue_timeout=0.5)
    await worker.start()
    await queue.disconnect()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
    text = generate_latest(jobmetrics.default_metrics().registry).decode()
    print("\n".join(line for line in text.splitlines()
                    if line.startswith(("harbor_jobservice_task_total",
                                        "harbor_jobservice_task_retries_total"))
                    and not line.endswith(" 0.0")))
