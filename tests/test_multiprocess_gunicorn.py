"""gunicorn with 4 sync workers in multi-process mode: one scrape speaks for every worker,
and a worker killed with SIGKILL takes only its live gauges with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Tuple

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

OP = "/work/<int:ms>"

APP = '''
import os, time
import flask
from jobmetrics import JobMetrics, WSGIMiddleware

m = JobMetrics(process_collectors=False)      # PROMETHEUS_MULTIPROC_DIR: multi-process mode
app = flask.Flask("jobs")

@app.route("/work/<int:ms>")
def work(ms):
    time.sleep(ms / 1000)
    return str(os.getpid())

@app.route("/hold/<name>")
def hold(name):
    with m.track_task("replication"):
        with open(os.path.join(os.environ["HOLD_DIR"], name), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    return "never"

app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)
metrics_app = m.make_wsgi_app()

def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        return metrics_app(environ, start_response)
    if environ["PATH_INFO"] == "/ready":      # not instrumented: tells the workers apart
        time.sleep(0.1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    return app(environ, start_response)
'''


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Tuple[str, Path, subprocess.Popen[bytes]]]:
    binary = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    if not os.path.exists(binary) and shutil.which("gunicorn") is None:
        pytest.skip("gunicorn missing")
    mpdir, hold = tmp_path / "mp", tmp_path / "hold"
    mpdir.mkdir()
    hold.mkdir()
    (tmp_path / "gapp.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(
        "from jobmetrics.multiprocess import child_exit\nworkers = 4\ntimeout = 600\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mpdir), HOLD_DIR=str(hold))
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "gapp:application"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        wait_workers(base, 4)    # all four booted and accepting
        yield base, hold, proc
    finally:
        stop(proc)


def test_four_workers_one_scrape_exact_counts_and_merged_quantiles(
        gunicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    # Eight concurrent clients against four sync workers, each busy for its sleep.
    check_requests_spread_over_workers(gunicorn[0], OP, 4)


def test_sigkilled_worker_keeps_counts_drops_live_gauges(
        gunicorn: Tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, hold, master = gunicorn
    check_worker_killed_mid_request(base, hold, OP, 4, 16, master)


def test_example_config_serves_flask_app_from_four_workers(tmp_path: Path) -> None:
    """examples/gunicorn.conf.py with examples/flask_app.py, run as docs/gunicorn.md says."""
    binary = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    examples = Path(__file__).resolve().parent.parent / "examples"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where the example makes its directory: checked below
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "flask_app:application"],
        cwd=examples, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        req = urllib.request.Request
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(get, [f"{base}/jobs/{i}" for i in range(1, 13)]))
            list(pool.map(lambda i: urllib.request.urlopen(
                req(f"{base}/jobs/{i}/scan", data=b"", method="POST"), timeout=30).read(),
                range(1, 7)))
        op = (("code", "200"), ("method", "GET"), ("operation", "/jobs/<int:job_id>"))
        scans = (P + "task_total", (("status", "success"), ("type", "scan")))
        text, got = scrape_until(
            base, lambda g: g.get((P + "http_request_total", op)) == 12.0
            and g.get(scans) == 6.0)
        assert got[(P + "http_request_total", op)] == 12.0
        assert got[scans] == 6.0
        # workers: the live processes with a file, once all four have booted
        _, got = scrape_until(base, lambda g: workers(g) == "4")
        assert workers(got) == "4"
        promtool_check(text)
        assert [p.name[:11] for p in tmp_path.iterdir()] == ["jobmetrics-"]
    finally:
        stop(proc)
    # The example removes the directory it made when gunicorn exits.
    assert list(tmp_path.iterdir()) == []

