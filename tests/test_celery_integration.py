"""``jobmetrics.celery.instrument(app)`` on real Celery workers (Redis broker started by
the test, ``PROMETHEUS_MULTIPROC_DIR`` unset): prefork ``--concurrency 2``, threads
``--concurrency 2`` and solo.

No task is decorated: the signals count every task; ``JOBMETRICS_PORT`` makes the main
process serve ``/metrics``, for every prefork child through the directory the worker made
itself as it started (and removed as it exited)."""

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

celery = pytest.importorskip("celery")


APP = '''
import os, time
from celery import Celery
from jobmetrics import JobMetrics
import jobmetrics.celery

app = Celery("capp", broker=os.environ["BROKER"], backend=os.environ["BACKEND"])
m = JobMetrics()                       # in memory: the worker gives it a directory
jobmetrics.celery.instrument(app, metrics=m)   # port from JOBMETRICS_PORT

@app.task
def ok():
    return os.getpid()

@app.task
def bad():
    raise RuntimeError("bad")

@app.task(bind=True, max_retries=3)
def flaky(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return self.request.retries

@app.task
@m.task("inner")                        # counted once, under the innermost type
def dec():
    return 1

@app.task(name='capp.we"ird\\nname')
def weird():
    return 1

@app.task
def hold(marker, release):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.02)
'''

WEIRD = 'capp.we"ird\nname'


class Worker:
    def __init__(self, base: str, client: Any, proc: subprocess.Popen[bytes], tmp: Path,
                 pool: str) -> None:
        self.base, self.client, self.proc, self.tmp, self.pool = base, client, proc, tmp, pool

    def scrape(self, ok: Any) -> Tuple[str, Got]:
        return scrape_until(self.base, ok, timeout=30)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["prefork", "threads", "solo"])
def worker(request: pytest.FixtureRequest, redis: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    pool = request.param
    db = {"prefork": 0, "threads": 2, "solo": 4}[pool]
    tmp = tmp_path_factory.mktemp(f"celery-{pool}")
    (tmp / "capp.py").write_text(APP)
    (tmp / "tmpdir").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(BROKER=redis.url(db), BACKEND=redis.url(db + 1), JOBMETRICS_PORT=str(port),
               JOBMETRICS_ADDR="127.0.0.1", PYTHONPATH=str(tmp), TMPDIR=str(tmp / "tmpdir"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "capp", "worker", "--pool", pool,
         "--concurrency", "2", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel", "WARNING"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = celery.Celery("client", broker=redis.url(db), backend=redis.url(db + 1),
                           set_as_current=False)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        yield Worker(f"http://127.0.0.1:{port}", client, proc, tmp, pool)
    finally:
        client.close()
        stop(proc, 30)
    # The directory the worker made is gone with it.
    assert [d for d in os.listdir(tmp / "tmpdir") if d.startswith("jobmetrics-")] == []






def retries(got: Got, type: str) -> float:
    return got.get((P + "task_retries_total", (("type", type),)), -1.0)


def send(w: Worker, name: str, *args: Any, **options: Any) -> Any:
    return w.client.send_task(f"capp.{name}" if "." not in name else name, args=list(args),
                              **options)




def test_every_task_counted_by_status_once(worker: Worker) -> None:
    w = worker
    results = [send(w, "ok") for _ in range(3)] + [send(w, "bad") for _ in range(2)]
    results += [send(w, "flaky"), send(w, "dec"), send(w, WEIRD)]
    for r in results:
        r.get(timeout=60, propagate=False)
    assert results[5].result == 1  # flaky: retried once, then succeeded
    text, got = w.scrape(lambda g: total(g, "capp.ok", "success") == 3
                         and total(g, "capp.flaky", "success") == 1
                         # (the retry may end before the attempt that sent it does)
                         and total(g, "capp.flaky", "fail") == 1
                         and total(g, "inner", "success") == 1
                         and total(g, WEIRD, "success") == 1
                         and total(g, "capp.bad", "fail") == 2)
    assert [total(got, "capp.ok", s) for s in ("success", "fail", "stop")] == [3, 0, 0]
    assert [total(got, "capp.bad", s) for s in ("success", "fail", "stop")] == [0, 2, 0]
    assert [total(got, "capp.flaky", s) for s in ("success", "fail", "stop")] == [1, 1, 0]
    assert retries(got, "capp.flaky") == 1
    assert retries(got, "capp.ok") == 0
    assert retries(got, "capp.bad") == 0
    # The decorated task is one unit of work, under its @m.task type.
    assert [total(got, "inner", s) for s in ("success", "fail", "stop")] == [1, 0, 0]
    assert [total(got, "capp.dec", s) for s in ("success", "fail", "stop")] in (
        [0, 0, 0], [-1, -1, -1])
    assert total(got, WEIRD, "success") == 1
    for t in ("capp.ok", "capp.bad", "capp.flaky", "inner", WEIRD):
        assert gauge(got, "running_task", t) == 0
        assert gauge(got, "pending_task", t) == 0
    assert got[(P + "task_success_rate", (("type", "capp.flaky"),))] == 0.5
    promtool_check(text)
    if w.pool == "prefork":
        # One directory, made by the worker as it started, holds every process's file.
        made = [d for d in os.listdir(w.tmp / "tmpdir") if d.startswith("jobmetrics-")]
        assert len(made) == 1, made


def test_held_running_pending_and_revoked(worker: Worker) -> None:
    w = worker
    if w.pool == "solo":
        # A solo worker's consumer waits while its one task runs: it receives nothing,
        # and answers no control command, until the task returns.
        pytest.skip("nothing is received while a solo worker runs a task")
    release = w.tmp / "release"
    # Revoked before the worker gets it: the worker discards it on receipt, stop.
    early = "early-revoked-id"
    assert w.client.control.revoke(early, reply=True, limit=1, timeout=10)  # the worker has it
    send(w, "ok", task_id=early)
    # An ETA task the worker holds is pending (revoked, it stays so until its ETA: Celery
    # checks the revoked list then; an hour is past the end of the test).
    eta = send(w, "ok", countdown=3600)
    markers = [w.tmp / f"held-{k}" for k in range(3)]
    held = [send(w, "hold", str(p), str(release)) for p in markers]
    pids = [wait_file(p) for p in markers[:2]]  # two run, the third waits for a slot
    _, got = w.scrape(lambda g: gauge(g, "running_task", "capp.hold") == 2
                      and gauge(g, "pending_task", "capp.hold") == 1
                      and gauge(g, "pending_task", "capp.ok") == 1
                      and total(g, "capp.ok", "stop") == 1)
    assert gauge(got, "running_task", "capp.hold") == 2
    assert gauge(got, "pending_task", "capp.hold") == 1
    assert gauge(got, "pending_task", "capp.ok") == 1     # the ETA task
    assert total(got, "capp.ok", "stop") == 1             # revoked before it came
    assert w.client.control.revoke(eta.id, reply=True, limit=1, timeout=10)
    if w.pool == "prefork":
        # Terminated while running: stop; the child it ran in is replaced.
        w.client.control.revoke(held[0].id, terminate=True, signal="SIGKILL")
        _, got = w.scrape(lambda g: total(g, "capp.hold", "stop") == 1
                          and gauge(g, "running_task", "capp.hold") == 2)
        assert total(got, "capp.hold", "stop") == 1
        wait_file(markers[2])                           # the third took the free slot
    release.write_text("")
    for r in held:
        r.get(timeout=60, propagate=False)
    terminated = 1 if w.pool == "prefork" else 0
    text, got = w.scrape(lambda g: total(g, "capp.hold", "success") == 3 - terminated
                         and total(g, "capp.ok", "stop") == 1)
    assert [total(got, "capp.hold", s) for s in ("success", "fail", "stop")] == [
        3 - terminated, 0, terminated]
    assert total(got, "capp.ok", "stop") == 1
    assert gauge(got, "pending_task", "capp.ok") == 1   # the revoked ETA task, still held
    assert gauge(got, "running_task", "capp.hold") == 0
    assert gauge(got, "pending_task", "capp.hold") == 0
    assert pids
    promtool_check(text)


def test_sigkilled_child_loses_no_finished_count(worker: Worker) -> None:
    w = worker
    if w.pool != "prefork":
        pytest.skip("only the prefork pool has children to kill")
    _, before = w.scrape(lambda g: True)
    ok_before = total(before, "capp.ok", "success")
    pids = {send(w, "ok").get(timeout=60) for _ in range(6)}
    marker, release = w.tmp / "killed", w.tmp / "never"
    r = send(w, "hold", str(marker), str(release))
    pid = wait_file(marker)
    os.kill(pid, signal.SIGKILL)
    r.get(timeout=60, propagate=False)
    text, got = w.scrape(lambda g: total(g, "capp.ok", "success") == ok_before + 6
                         and total(g, "capp.hold", "fail") == 1
                         and gauge(g, "running_task", "capp.hold") == 0)
    # The killed child's earlier tasks are kept; the task it ran is fail (WorkerLostError).
    assert total(got, "capp.ok", "success") == ok_before + 6
    assert total(got, "capp.hold", "fail") == 1
    assert gauge(got, "running_task", "capp.hold") == 0
    assert w.proc.poll() is None
    assert pids
    promtool_check(text)


def test_only_sending_process_records_nothing_and_bad_arguments(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    import jobmetrics.celery as jc
    from jobmetrics import JobMetrics

    app = celery.Celery("sender", broker="memory://", set_as_current=False)
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        jc.instrument(app, metrics="m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jc.instrument(app, port=70000)
    with pytest.raises(TypeError, match="Celery app"):
        jc.instrument(object())
    m = JobMetrics(registry=CollectorRegistry())
    inst = jc.instrument(app, metrics=m)
    with pytest.raises(ValueError, match="instrumented already"):
        jc.instrument(app, metrics=m)
    assert inst.directory is None and inst.server is None


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def finished(got: Got, type: str) -> float:
    """Units of work ended for good: successes, and failures not retried."""
    fails = total(got, type, "fail") - got.get((P + "task_retries_total", (("type", type),)), 0)
    return total(got, type, "success") + fails


def test_example_as_documented(redis: RedisServer, tmp_path: Path) -> None:
    """docs/celery.md: examples/celery_worker.py's prefork worker, jobs sent by its
    own __main__, JOBMETRICS_PORT served."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(CELERY_BROKER_URL=redis.url(6), JOBMETRICS_PORT=str(port),
               JOBMETRICS_ADDR="127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--pool", "prefork",
         "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        sent = subprocess.run([sys.executable, "celery_worker.py", "6"], cwd=EXAMPLES,
                              env=env, capture_output=True, timeout=60, check=True)
        assert sent.stdout.decode().startswith("sent 6 replications")
        text, got = scrape_until(base, lambda g: finished(g, "celery_worker.replicate") == 6
                                 and total(g, "celery_worker.garbage_collect", "success") == 1,
                                 timeout=60)
        assert finished(got, "celery_worker.replicate") == 6
        assert total(got, "celery_worker.garbage_collect", "success") == 1
        promtool_check(text)
    finally:
        stop(proc, 30)


def test_retry_starting_in_another_thread_before_the_attempt_ends() -> None:
    """The threads pool: a retry (same task id) may start in another thread before
    task_postrun of the attempt that retried it; each attempt ends with its own status."""
    import threading

    from celery import signals
    from prometheus_client import CollectorRegistry

    import jobmetrics.celery as jc
    from jobmetrics import JobMetrics
    from promcheck import value

    registry = CollectorRegistry()
    app = celery.Celery("race", broker="memory://", set_as_current=False)
    jc.instrument(app, metrics=JobMetrics(registry=registry))

    @app.task(name="race.proxy")
    def proxy() -> None:
        pass

    job = app.tasks[proxy.name]  # the task object the worker's signals carry
    started, retried = threading.Event(), threading.Event()

    def first() -> None:
        signals.task_prerun.send(sender=job, task_id="same", task=job)
        started.set()
        retried.wait(10)
        signals.task_postrun.send(sender=job, task_id="same", task=job, state="RETRY")

    def second() -> None:
        started.wait(10)
        signals.task_prerun.send(sender=job, task_id="same", task=job)
        retried.set()
        time.sleep(0.05)  # let the first attempt end first (either order must count right)
        signals.task_postrun.send(sender=job, task_id="same", task=job, state="SUCCESS")

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert value(registry, P + "task_total", type="race.proxy", status="fail") == 1
    assert value(registry, P + "task_total", type="race.proxy", status="success") == 1
    assert value(registry, P + "task_retries_total", type="race.proxy") == 1
    assert value(registry, P + "running_task", type="race.proxy") == 0
