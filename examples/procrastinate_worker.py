"""A Procrastinate worker whose every job is counted:
``python examples/procrastinate_worker.py postgresql://user:password@host/db``.

It applies Procrastinate's schema to the (empty) database, defers a few jobs (one
succeeds, one fails, one fails once and is retried), runs a worker until the queues are
empty, and prints what a scrape shows. In a real deployment, keep ``instrument(app)``
next to the app and run ``JOBMETRICS_PORT=8001 procrastinate --app=tasks.app worker``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import procrastinate
from prometheus_client import generate_latest

import jobmetrics
import jobmetrics.procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=sys.argv[1] if len(sys.argv) > 1 else ""))


@app.task(name="resize")
def resize(size: int) -> int:
    return size * 2


@app.task(name="send_mail", retry=3, pass_context=True)
async def send_mail(context: Any, to: str) -> None:
    if context.job.attempts == 0:
        raise ConnectionError("the mail server said: later")


@app.task(name="broken")
def broken() -> None:
    raise ValueError("no such image")


jobmetrics.procrastinate.instrument(app)


async def main() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await resize.defer_async(size=100)
        await send_mail.defer_async(to="ops@example.com")
        await broken.defer_async()
        # wait=False: stop once every job (the retry included) has run
        await app.run_worker_async(wait=False, install_signal_handlers=False)


if __name__ == "__main__":
    asyncio.run(main())
    text = generate_latest(jobmetrics.default_metrics().registry).decode()
    print("\n".join(line for line in text.splitlines()
                    if line.startswith(("harbor_jobservice_task_total",
                                        "harbor_jobservice_task_retries_total"))))
