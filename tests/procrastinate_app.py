"""The Procrastinate app ``procrastinate --app=procrastinate_app.app worker`` runs in
tests/test_procrastinate.py (database from ``$JOBMETRICS_TEST_PG_URL``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import procrastinate
from procrastinate.exceptions import JobAborted

import jobmetrics
import jobmetrics.procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get("JOBMETRICS_TEST_PG_URL", "")))
m = jobmetrics.default_metrics()


@m.task("inner")
def inner() -> str:
    return "inner"


@app.task(name="ok")
def ok() -> str:
    return "ok"


@app.task(name="aok")
async def aok() -> str:
    await asyncio.sleep(0)
    return "ok"


@app.task(name="boom")
def boom() -> None:
    raise ValueError("boom")


@app.task(name="flaky", retry=2, pass_context=True)
def flaky(context: Any) -> str:
    if context.job.attempts == 0:
        raise RuntimeError("try again")
    return "done"


@app.task(name="doomed", retry=1)
async def doomed() -> None:
    raise RuntimeError("never")


@app.task(name="twice")
def twice() -> str:
    return inner()


@app.task(name="hold")
async def hold() -> None:
    await asyncio.sleep(60)


@app.task(name="hold_sync", pass_context=True)
def hold_sync(context: Any) -> None:
    deadline = time.monotonic() + 60
    while not context.should_abort():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    raise JobAborted("asked to stop")


jobmetrics.procrastinate.instrument(app)
