"""``rq worker --worker-class jobmetrics.rq.Worker``: RQ's default forking worker on a
real redis-server, ``PROMETHEUS_MULTIPROC_DIR`` unset, ``/metrics`` from
``JOBMETRICS_PORT``. Every job runs in a work horse forked for it; none of their counts
is lost, and a horse killed or stopped is counted by the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Tuple

import pytest

from exporter_support import RedisServer
from mpservers import P, stop
from promcheck import promtool_check
from servers import free_port, scrape_until, wait_http
from worker_support import Got, gauge, total, wait_file

rq = pytest.importorskip("rq")


JOBS = '''
import os, time
import jobmetrics

m = jobmetrics.default_metrics()       # what the worker records into

def ok():
    return os.getpid()

def bad():
    raise RuntimeError("bad")

def flaky(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt")
    return 2

@m.task("inner")                        # counted once, under the innermost type
def dec():
    return 1

def hold(marker, release):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.02)
'''


class RQWorker:
    def __init__(self, base: str, queue: Any, proc: subprocess.Popen[bytes], tmp: Path,
                 server: RedisServer) -> None:
        self.base, self.queue, self.proc, self.tmp = base, queue, proc, tmp
        self.server = server

    def scrape(self, ok: Any) -> Tuple[str, Got]:
        return scrape_until(self.base, ok, timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RQWorker]:
    tmp = tmp_path_factory.mktemp("rq")
    server = RedisServer(tmp_path_factory.mktemp("rq-redis"))
    server.start()
    (tmp / "rjobs.py").write_text(JOBS)
    (tmp / "tmpdir").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(JOBMETRICS_PORT=str(port), JOBMETRICS_ADDR="127.0.0.1", PYTHONPATH=str(tmp),
               TMPDIR=str(tmp / "tmpdir"))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "rq"), "worker",
         "--worker-class", "jobmetrics.rq.Worker", "--url", server.url(0), "--quiet", "default"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue = rq.Queue("default", connection=server.client(0))
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        yield RQWorker(f"http://127.0.0.1:{port}", queue, proc, tmp, server)
    finally:
        stop(proc, 30)
        server.stop()
    assert [d for d in os.listdir(tmp / "tmpdir") if d.startswith("jobmetrics-")] == []








def wait_job(job: Any, *states: str) -> None:
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in states:
        assert time.monotonic() < deadline, (job.id, job.get_status())
        time.sleep(0.02)


def test_every_job_counted_by_status_once_across_work_horses(worker: RQWorker) -> None:
    w = worker
    q = w.queue
    jobs = [q.enqueue("rjobs.ok") for _ in range(3)] + [q.enqueue("rjobs.bad") for _ in range(2)]
    flaky = q.enqueue("rjobs.flaky", str(w.tmp / "flaky"), retry=rq.Retry(max=1))
    jobs += [flaky, q.enqueue("rjobs.dec")]
    for job in jobs:
        wait_job(job, "finished", "failed")
    text, got = w.scrape(lambda g: total(g, "rjobs.ok", "success") == 3
                         and total(g, "rjobs.bad", "fail") == 2
                         and total(g, "rjobs.flaky", "success") == 1
                         and total(g, "inner", "success") == 1)
    assert [total(got, "rjobs.ok", s) for s in ("success", "fail", "stop")] == [3, 0, 0]
    assert [total(got, "rjobs.bad", s) for s in ("success", "fail", "stop")] == [0, 2, 0]
    assert [total(got, "rjobs.flaky", s) for s in ("success", "fail", "stop")] == [1, 1, 0]
    assert got[(P + "task_retries_total", (("type", "rjobs.flaky"),))] == 1
    assert got[(P + "task_retries_total", (("type", "rjobs.bad"),))] == 0
    assert [total(got, "inner", s) for s in ("success", "fail", "stop")] == [1, 0, 0]
    assert total(got, "rjobs.dec", "success") in (0, -1)
    for t in ("rjobs.ok", "rjobs.bad", "rjobs.flaky", "inner"):
        assert gauge(got, "running_task", t) == 0
        assert gauge(got, "pending_task", t) == 0
    # Each of the 8 runs waited in the queue: queue_wait_seconds{queue="default"}.
    assert got[(P + "queue_wait_seconds_count", (("queue", "default"),))] == 8
    promtool_check(text)
    # The horses' files are folded in as they exit: the worker's own file and the archive.
    (made,) = [d for d in os.listdir(w.tmp / "tmpdir") if d.startswith("jobmetrics-")]
    assert set(os.listdir(w.tmp / "tmpdir" / made)) == {
        "jobmetrics-archive.db", f"jobmetrics-{w.proc.pid}.db", "jobmetrics-budgets.keys",
        "jobmetrics.lock"}


def test_held_stopped_killed_and_cancelled(worker: RQWorker) -> None:
    from rq.command import send_stop_job_command

    w = worker
    q = w.queue
    release = w.tmp / "release"
    marker = w.tmp / "held-0"
    held = q.enqueue("rjobs.hold", str(marker), str(release))
    wait_file(marker)
    # The one worker is busy: a job cancelled while it waits never reaches it.
    cancelled = q.enqueue("rjobs.ok")
    cancelled.cancel()
    _, got = w.scrape(lambda g: gauge(g, "running_task", "rjobs.hold") == 1)
    assert gauge(got, "running_task", "rjobs.hold") == 1
    send_stop_job_command(q.connection, held.id)
    wait_job(held, "stopped")
    _, got = w.scrape(lambda g: total(g, "rjobs.hold", "stop") == 1)
    assert [total(got, "rjobs.hold", s) for s in ("success", "fail", "stop")] == [0, 0, 1]
    # A work horse killed mid-job: the main process counts it fail; no count is lost.
    ok_before = total(got, "rjobs.ok", "success")
    for job in [q.enqueue("rjobs.ok") for _ in range(3)]:
        wait_job(job, "finished")
    killed_marker = w.tmp / "held-1"
    killed = q.enqueue("rjobs.hold", str(killed_marker), str(w.tmp / "never"))
    os.kill(wait_file(killed_marker), signal.SIGKILL)
    wait_job(killed, "failed")
    release.write_text("")
    text, got = w.scrape(lambda g: total(g, "rjobs.hold", "fail") == 1
                         and total(g, "rjobs.ok", "success") == ok_before + 3)
    assert [total(got, "rjobs.hold", s) for s in ("success", "fail", "stop")] == [0, 1, 1]
    assert total(got, "rjobs.ok", "success") == ok_before + 3   # the cancelled one: not
    assert total(got, "rjobs.ok", "stop") == 0
    assert gauge(got, "running_task", "rjobs.hold") == 0
    assert w.proc.poll() is None
    promtool_check(text)


def test_simple_worker_burst_in_process(tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from prometheus_client import CollectorRegistry

    import jobmetrics.rq as jrq
    from jobmetrics import JobMetrics
    from promcheck import value

    server = RedisServer(tmp_path_factory.mktemp("rq-simple"))
    server.start()
    try:
        registry = CollectorRegistry()

        class Simple(jrq.SimpleWorker):
            jobmetrics = JobMetrics(registry=registry)

        conn = server.client(0)
        q = rq.Queue("simple", connection=conn)
        for _ in range(4):
            q.enqueue(os.getpid)
        q.enqueue("builtins.int", "not a number")
        Simple([q], connection=conn).work(burst=True)
        assert value(registry, P + "task_total", type="posix.getpid", status="success") == 4
        assert value(registry, P + "task_total", type="builtins.int", status="fail") == 1
        assert value(registry, P + "queue_wait_seconds_count", queue="simple") == 5
    finally:
        server.stop()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def finished(got: Got, type: str) -> float:
    """Units of work ended for good: successes, and failures not retried."""
    fails = total(got, type, "fail") - got.get((P + "task_retries_total", (("type", type),)), 0)
    return total(got, type, "success") + fails


def test_example_as_documented(worker: RQWorker) -> None:
    """docs/rq.md: examples/rq_jobs.py under ``rq worker --worker-class
    jobmetrics.rq.Worker``, jobs enqueued by its own __main__."""
    port = free_port()
    url = worker.server.url(3)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(RQ_REDIS_URL=url, JOBMETRICS_PORT=str(port), JOBMETRICS_ADDR="127.0.0.1")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "rq"), "worker", "--worker-class",
         "jobmetrics.rq.Worker", "--url", url, "default"],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        sent = subprocess.run([sys.executable, "rq_jobs.py", "6"], cwd=EXAMPLES, env=env,
                              capture_output=True, timeout=60, check=True)
        assert sent.stdout.decode().startswith("enqueued 6 replications")
        text, got = scrape_until(base, lambda g: finished(g, "rq_jobs.replicate") == 6
                                 and total(g, "rq_jobs.garbage_collect", "success") == 1,
                                 timeout=60)
        assert finished(got, "rq_jobs.replicate") == 6
        assert total(got, "rq_jobs.garbage_collect", "success") == 1
        promtool_check(text)
    finally:
        stop(proc, 30)
