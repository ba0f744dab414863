"""uvicorn --workers 2 in multi-process mode: one scrape speaks for both workers, and a
worker killed with SIGKILL (uvicorn starts another) takes only its live gauges with it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Tuple

import pytest

from mpservers import (
    P,
    check_requests_spread_over_workers,
    check_worker_killed_mid_request,
    stop,
    wait_workers,
    workers,
)
from promcheck import promtool_check
from servers import free_port, get, scrape_until, wait_http

pytest.importorskip("uvicorn")

OP = "/work/{ms:int}"

APP = '''
import asyncio, os, time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from jobmetrics import ASGIMiddleware, JobMetrics

m = JobMetrics(process_collectors=False)      # PROMETHEUS_MULTIPROC_DIR: multi-process mode

async def work(request):
    # Blocks this worker's event loop, so the next connections go to the other worker.
    time.sleep(request.path_params["ms"] / 1000)
    return PlainTextResponse(str(os.getpid()))

async def hold(request):
    with m.track_task("replication"):
        with open(os.path.join(os.environ["HOLD_DIR"], request.path_params["name"]), "w") as f:
            f.write(str(os.getpid()))
        await asyncio.sleep(600)
    return PlainTextResponse("never")

app = Starlette(routes=[
    Route("/work/{ms:int}", work),
    Route("/hold/{name}", hold),
    Mount("/metrics", app=m.make_asgi_app()),
])
app.add_middleware(ASGIMiddleware, metrics=m)

async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/ready":   # not instrumented
        time.sleep(0.1)
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await app(scope, receive, send)
'''

WORKERS = 2


def uvicorn_env(mpdir: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mpdir), **extra)
    return env


@pytest.fixture
def uvicorn(tmp_path: Path) -> Iterator[Tuple[str, Path, subprocess.Popen[bytes]]]:
    mpdir, hold = tmp_path / "mp", tmp_path / "hold"
    mpdir.mkdir()
    hold.mkdir()
    (tmp_path / "uapp.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "uapp:application", "--workers", str(WORKERS),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path, env=uvicorn_env(mpdir, HOLD_DIR=str(hold)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        wait_workers(base, WORKERS)
        yield base, hold, proc
    finally:
        stop(proc)


def test_two_workers_one_scrape_exact_counts_and_merged_quantiles(
        uvicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    # /work blocks a worker's event loop, so the other worker takes the next requests;
    # the supervisor never imports the app, so info's workers is exactly the workers.
    check_requests_spread_over_workers(uvicorn[0], OP, WORKERS)


def test_sigkilled_worker_is_replaced_counts_kept_live_gauges_dropped(
        uvicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, hold, supervisor = uvicorn
    check_worker_killed_mid_request(base, hold, OP, WORKERS, 12, supervisor)


def test_example_app_under_uvicorn_workers_as_documented(tmp_path: Path) -> None:
    """docs/uvicorn.md: examples/starlette_app.py under ``uvicorn --workers``."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "starlette_app:app", "--workers", str(WORKERS),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=examples, env=uvicorn_env(mpdir), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(get, [f"{base}/api/jobs/{i}" for i in range(1, 11)]))
        op = (("code", "200"), ("method", "GET"), ("operation", "/api/jobs/{job_id:int}"))
        key = (P + "http_request_total", op)
        text, got = scrape_until(base, lambda g: g.get(key) == 10.0 and workers(g) == "2")
        assert got[key] == 10.0
        assert workers(got) == "2"       # once both have booted
        files = [f for f in os.listdir(mpdir) if f.endswith(".db")]
        assert len(files) == WORKERS, files     # one per worker, none for the supervisor
        promtool_check(text)
    finally:
        stop(proc)
