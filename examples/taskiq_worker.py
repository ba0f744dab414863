"""A Taskiq worker whose every task is counted: ``python examples/taskiq_worker.py REDIS_PORT``.

Run as a script, it starts ``taskiq worker taskiq_worker:broker --workers 2`` (two worker
processes) with ``JOBMETRICS_PORT`` set (default 8001), sends four tasks (one succeeds,
one fails, one fails once and is retried by ``SimpleRetryMiddleware``), waits until the
one ``/metrics`` of both processes shows them, prints the counts and stops the worker.
In a real deployment, keep ``instrument(broker)`` next to the broker and run
``JOBMETRICS_PORT=8001 taskiq worker taskiq_worker:broker``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request

from taskiq import Context, SimpleRetryMiddleware, TaskiqDepends
from taskiq_redis import ListQueueBroker

import jobmetrics.taskiq

if __name__ == "__main__" and len(sys.argv) > 1:
    os.environ["TASKIQ_REDIS_URL"] = f"redis://127.0.0.1:{sys.argv[1]}/0"

# socket_timeout=None: redis-py 8 gives every connection a 5 s read timeout, which ends
# ListQueueBroker's blocking read (and the worker process) on an idle queue.
broker = ListQueueBroker(os.environ.get("TASKIQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
                         socket_timeout=None).with_middlewares(SimpleRetryMiddleware())
jobmetrics.taskiq.instrument(broker)   # port from $JOBMETRICS_PORT


@broker.task(task_name="resize")
async def resize(size: int) -> int:
    return size * 2


@broker.task(task_name="send_mail", retry_on_error=True, max_retries=3)
async def send_mail(to: str, context: Context = TaskiqDepends()) -> None:  # noqa: B008
    if not context.message.labels.get("_retries"):
        raise ConnectionError("the mail server said: later")


@broker.task(task_name="broken")
async def broken() -> None:
    raise ValueError("no such image")


async def send() -> None:
    await broker.startup()
    await resize.kiq(100)
    await resize.kiq(200)
    await send_mail.kiq("ops@example.com")
    await broken.kiq()
    await broker.shutdown()


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def main() -> None:
    port = os.environ.setdefault("JOBMETRICS_PORT", "8001")
    url = f"http://{os.environ.get('JOBMETRICS_ADDR', '127.0.0.1')}:{port}/metrics"
    here = os.path.dirname(os.path.abspath(__file__))
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", "taskiq_worker:broker", "--workers", "2"],
        cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not scrape(url):
            if time.monotonic() > deadline:
                raise SystemExit("the worker never served /metrics")
            time.sleep(0.1)
        asyncio.run(send())
        done = 'harbor_jobservice_task_total{status="success",type="send_mail"} 1.0'
        text = scrape(url)
        while done not in text or 'status="success",type="resize"} 2.0' not in text:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
            text = scrape(url)
    finally:
        worker.terminate()
        worker.wait(30)
    print("\n".join(line for line in text.splitlines()
                    if line.startswith(("harbor_jobservice_task_total",
                                        "harbor_jobservice_task_retries_total"))
                    and not line.endswith(" 0.0")))


if __name__ == "__main__":
    main()
