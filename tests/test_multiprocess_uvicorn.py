"""uvicorn --workers 2 in multi-process mode: one scrape speaks for both workers, and a
worker killed with SIGKILL (uvicorn starts another) takes only its live gauges with it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from promcheck import Labels, promtool_check
from servers import free_port, get, scrape_until, wait_http

pytest.importorskip("uvicorn")

P = "harbor_jobservice_"
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

SLEEPS_MS = [round(40 * 1.2 ** k) for k in range(20)]
WORKERS = 2


def uvicorn_env(mpdir: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mpdir), **extra)
    return env


def wait_workers(base: str, n: int) -> None:
    """Until ``n`` different workers have answered an uninstrumented ``/ready``."""
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(8) as pool:
        while len(set(pool.map(get, [base + "/ready"] * 8))) < n:
            assert time.monotonic() < deadline, f"uvicorn never ran {n} workers"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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


def total(got: Dict[Tuple[str, Labels], float]) -> float:
    return got.get((P + "http_request_total",
                    (("code", "200"), ("method", "GET"), ("operation", OP))), 0.0)


def duration(got: Dict[Tuple[str, Labels], float], suffix: str = "_count",
             quantile: str = "") -> float:
    labels: Labels = (("method", "GET"), ("operation", OP))
    if quantile:
        labels = (*labels, ("quantile", quantile))
    return got.get((P + "http_request_duration_seconds" + suffix, labels), 0.0)


def workers(got: Dict[Tuple[str, Labels], float]) -> str:
    return next(dict(lb)["workers"] for name, lb in got if name == P + "info")


def test_two_workers_one_scrape_exact_counts_and_merged_quantiles(
        uvicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, _, _ = uvicorn
    with ThreadPoolExecutor(8) as pool:
        pids = list(pool.map(get, [f"{base}/work/{ms}" for ms in SLEEPS_MS]))
    assert len(set(pids)) == WORKERS
    n = len(SLEEPS_MS)
    text, got = scrape_until(base, lambda g: total(g) >= n)
    assert total(got) == n
    assert duration(got) == n
    assert duration(got, "_sum") >= sum(SLEEPS_MS) / 1000
    assert got[(P + "http_inflight_requests", ())] == 0.0
    done = sorted(ms / 1000 for ms in SLEEPS_MS)
    for q in ("0.5", "0.9", "0.99"):
        exact = done[math.floor(float(q) * (n - 1))]
        est = duration(got, "", q)
        assert exact * 0.99 <= est <= exact * 1.01 + 0.008, (q, est, exact)
    assert workers(got) == str(WORKERS)  # the supervisor never imports the app
    promtool_check(text)


def test_sigkilled_worker_is_replaced_counts_kept_live_gauges_dropped(
        uvicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, hold, supervisor = uvicorn
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, [f"{base}/work/30"] * 12))
    _, got = scrape_until(base, lambda g: total(g) >= 12)
    assert total(got) == 12

    errors: List[BaseException] = []

    def held() -> None:
        try:
            get(f"{base}/hold/a", timeout=60)
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            errors.append(exc)

    client = threading.Thread(target=held)
    client.start()
    deadline = time.monotonic() + 20
    while not (hold / "a").exists() or not (hold / "a").read_text():
        assert time.monotonic() < deadline, "the held request never started"
        time.sleep(0.02)
    victim = int((hold / "a").read_text())
    running = (P + "running_task", (("type", "replication"),))
    inflight = (P + "http_inflight_requests", ())
    _, got = scrape_until(base, lambda g: g.get(running) == 1.0)
    assert got[running] == 1.0
    assert got[inflight] == 1.0

    os.kill(victim, signal.SIGKILL)
    client.join(60)
    assert errors, "the held request should fail with its worker"

    # The next scrape no longer counts the dead worker's in-flight request or task.
    _, got = scrape_until(base, lambda g: g.get(running) == 0.0 and g.get(inflight) == 0.0)
    assert got[running] == 0.0
    assert got[inflight] == 0.0
    assert total(got) == 12
    assert duration(got) == 12
    # uvicorn's supervisor starts a replacement (it checks every half second).
    wait_workers(base, WORKERS)
    with ThreadPoolExecutor(8) as pool:
        after = set(pool.map(get, [f"{base}/work/30"] * 12))
    assert str(victim) not in after
    text, got = scrape_until(base, lambda g: total(g) >= 24)
    assert total(got) == 24
    assert duration(got) == 24
    assert supervisor.poll() is None
    promtool_check(text)


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
