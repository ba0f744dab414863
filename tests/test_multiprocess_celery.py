"""A real Celery prefork worker (Redis broker) in multi-process mode: the main process
serves /metrics for all its children, children recycled by ``--max-tasks-per-child`` are
folded away by ``setup_celery()``, and a child killed with SIGKILL takes only its running
task with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from exporter_support import RedisServer
from mpservers import SLEEPS_MS, Got, P, assert_quantiles_of, stop, workers
from promcheck import promtool_check
from servers import free_port, scrape_until, wait_http

celery = pytest.importorskip("celery")

CONCURRENCY = 4
MAX_TASKS_PER_CHILD = 3

APP = '''
import os, time
from celery import Celery
from celery.signals import worker_init
from jobmetrics import JobMetrics
from jobmetrics.multiprocess import setup_celery

app = Celery("capp", broker=os.environ["BROKER"], backend=os.environ["BACKEND"])
m = JobMetrics(process_collectors=False)     # PROMETHEUS_MULTIPROC_DIR: multi-process mode
setup_celery()                               # children fold their file in as they exit

@worker_init.connect
def serve_metrics(**_):                      # the main process answers for every child
    m.start_http_server(int(os.environ["METRICS_PORT"]), addr="127.0.0.1")

@app.task
@m.task("replication")
def replicate(ms, fail=False):
    time.sleep(ms / 1000)
    if fail:
        raise RuntimeError("replication failed")
    return os.getpid()

@app.task
@m.task("gc")
def hold(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
'''

# Every fourth task fails.
FAILS = [k % 4 == 3 for k in range(20)]


@pytest.fixture
def worker(tmp_path: Path, redis_server: RedisServer
           ) -> Iterator[Tuple[str, Path, celery.Celery, subprocess.Popen[bytes]]]:
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    (tmp_path / "capp.py").write_text(APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mpdir), BROKER=redis_server.url(0),
               BACKEND=redis_server.url(1), METRICS_PORT=str(port), PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "capp", "worker", "--pool", "prefork",
         "--concurrency", str(CONCURRENCY), "--max-tasks-per-child", str(MAX_TASKS_PER_CHILD),
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = celery.Celery("client", broker=redis_server.url(0), backend=redis_server.url(1),
                           set_as_current=False)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        yield base, mpdir, client, proc
    finally:
        client.close()
        stop(proc, 30)   # Celery's warm shutdown; SIGKILL if it hangs


def tasks(got: Got, status: str, type: str = "replication"
          ) -> float:
    return got.get((P + "task_total", (("status", status), ("type", type))), 0.0)


def pid_files(mpdir: Path) -> List[str]:
    return [f for f in os.listdir(mpdir) if re.fullmatch(r"jobmetrics-\d+\.db", f)]


def test_prefork_children_one_scrape_exact_totals_rate_and_quantiles(
        worker: Tuple[str, Path, celery.Celery, subprocess.Popen[bytes]]) -> None:
    base, mpdir, client, proc = worker
    results = [client.send_task("capp.replicate", args=[ms, fail])
               for ms, fail in zip(SLEEPS_MS, FAILS)]
    pids = set()
    for r in results:
        out = r.get(timeout=60, propagate=False)
        if isinstance(out, int):
            pids.add(out)
    assert sum(isinstance(r.result, RuntimeError) for r in results) == 5
    # 15 successes, at most 3 tasks per child: at least 5 children ran them.
    assert len(pids) >= 15 // MAX_TASKS_PER_CHILD

    # Children that reached --max-tasks-per-child folded their file in as they exited
    # (setup_celery): what is left is one file per live process, before any scrape.
    deadline = time.monotonic() + 20
    while len(pid_files(mpdir)) > CONCURRENCY + 1:
        assert time.monotonic() < deadline, pid_files(mpdir)
        time.sleep(0.05)
    assert (mpdir / "jobmetrics-archive.db").exists()

    # (A recycled child's replacement may take a moment to be forked.)
    text, got = scrape_until(base, lambda g: tasks(g, "success") + tasks(g, "fail") >= 20
                             and workers(g) == str(CONCURRENCY + 1))
    assert tasks(got, "success") == 15
    assert tasks(got, "fail") == 5
    assert got[(P + "task_success_rate", (("type", "replication"),))] == 0.75
    assert got[(P + "running_task", (("type", "replication"),))] == 0.0
    key = P + "task_process_time_seconds"
    labels = (("status", "success"), ("type", "replication"))
    assert got[(key + "_count", labels)] == 15
    assert_quantiles_of({q: got[(key, (("quantile", q), *labels))] for q in ("0.5", "0.9", "0.99")},
                        [ms / 1000 for ms, fail in zip(SLEEPS_MS, FAILS) if not fail])
    # The main process has a file too (it imported the app): children + 1.
    assert workers(got) == str(CONCURRENCY + 1)
    assert proc.poll() is None
    promtool_check(text)


def test_sigkilled_child_replaced_counts_kept_running_dropped(
        tmp_path: Path,
        worker: Tuple[str, Path, celery.Celery, subprocess.Popen[bytes]]) -> None:
    base, _, client, proc = worker
    for r in [client.send_task("capp.replicate", args=[30]) for _ in range(6)]:
        r.get(timeout=60)
    _, got = scrape_until(base, lambda g: tasks(g, "success") >= 6)
    assert tasks(got, "success") == 6

    marker = tmp_path / "held"
    client.send_task("capp.hold", args=[str(marker)])
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the held task never started"
        time.sleep(0.02)
    victim = int(marker.read_text())
    running = (P + "running_task", (("type", "gc"),))
    _, got = scrape_until(base, lambda g: g.get(running) == 1.0)
    assert got[running] == 1.0

    os.kill(victim, signal.SIGKILL)
    _, got = scrape_until(base, lambda g: g.get(running) == 0.0)
    assert got[running] == 0.0
    assert tasks(got, "success") == 6
    # Cut short by a kill, the task never ended: counted neither as done nor failed.
    assert sum(tasks(got, s, "gc") for s in ("success", "fail", "stop")) == 0

    # Celery forks a replacement; work goes on and the totals are exact.
    for r in [client.send_task("capp.replicate", args=[30]) for _ in range(6)]:
        assert r.get(timeout=60) != victim
    text, got = scrape_until(base, lambda g: tasks(g, "success") >= 12)
    assert tasks(got, "success") == 12
    assert proc.poll() is None
    promtool_check(text)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def start_example_worker(tmp_path: Path, redis_server: RedisServer, port: int,
                         mpdir: Optional[Path]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(CELERY_BROKER_URL=redis_server.url(0), METRICS_PORT=str(port))
    if mpdir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(mpdir)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
         "--concurrency", "4", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker.log").open("wb"))


def test_example_app_as_documented(tmp_path: Path, redis_server: RedisServer) -> None:
    """docs/celery.md: examples/celery_app.py's worker, jobs sent by its own __main__."""
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    port = free_port()
    proc = start_example_worker(tmp_path, redis_server, port, mpdir)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        env = dict(os.environ, CELERY_BROKER_URL=redis_server.url(0))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)   # the sender records nothing
        sent = subprocess.run([sys.executable, "celery_app.py", "12"], cwd=EXAMPLES, env=env,
                              capture_output=True, timeout=60, check=True)
        assert sent.stdout.decode().startswith("sent 12 replications")

        def done(g: Got) -> float:
            return tasks(g, "success") + tasks(g, "fail")

        text, got = scrape_until(base, lambda g: done(g) == 12
                                 and tasks(g, "success", "gc") == 1, timeout=60)
        assert done(got) == 12
        assert tasks(got, "success", "gc") == 1
        assert "jobmetrics: Celery prefork pool" not in (tmp_path / "worker.log").read_text()
        promtool_check(text)
    finally:
        stop(proc, 30)


def test_prefork_worker_without_the_mode_warns(tmp_path: Path,
                                               redis_server: RedisServer) -> None:
    proc = start_example_worker(tmp_path, redis_server, free_port(), None)
    try:
        log = tmp_path / "worker.log"
        deadline = time.monotonic() + 60
        while "jobmetrics: Celery prefork pool without multi-process mode" not in (
                log.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert "PROMETHEUS_MULTIPROC_DIR" in log.read_text()
    finally:
        stop(proc, 30)
