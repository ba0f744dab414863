"""``JobMetricsMiddleware`` under ``dramatiq dapp --processes 2 --threads 2`` on a real
redis-server, ``PROMETHEUS_MULTIPROC_DIR`` unset: one endpoint (``JOBMETRICS_PORT``) for
both worker processes, through the directory they made for this start (and that is gone
when the command stops)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Tuple

import pytest

from exporter_support import RedisServer
from mpservers import P, stop
from promcheck import promtool_check
from servers import free_port, scrape_until, wait_http
from worker_support import Got, gauge, total, wait_file

dramatiq = pytest.importorskip("dramatiq")


APP = '''
import os, time
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from jobmetrics import JobMetrics
from jobmetrics.dramatiq import JobMetricsMiddleware

broker = RedisBroker(url=os.environ["BROKER"])
m = JobMetrics()                                  # in memory: the processes share a directory
broker.add_middleware(JobMetricsMiddleware(metrics=m))   # port from JOBMETRICS_PORT
dramatiq.set_broker(broker)

@dramatiq.actor(max_retries=0)
def ok():
    return os.getpid()

@dramatiq.actor(max_retries=0)
def bad():
    raise RuntimeError("bad")

@dramatiq.actor(max_retries=1, min_backoff=1, max_backoff=1)
def flaky(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt")

@dramatiq.actor(max_retries=0)
@m.task("inner")                                  # counted once, under the innermost type
def dec():
    pass

@dramatiq.actor(actor_name='we"ird\\nname', max_retries=0)
def weird():
    pass

@dramatiq.actor(max_retries=0, time_limit=600_000)
def hold(marker, release):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.02)
'''

WEIRD = 'we"ird\nname'


class DWorker:
    def __init__(self, base: str, broker: Any, proc: subprocess.Popen[bytes], tmp: Path,
                 server: RedisServer) -> None:
        self.base, self.broker, self.proc, self.tmp = base, broker, proc, tmp
        self.server = server

    def send(self, actor: str, *args: Any, delay: Optional[int] = None) -> None:
        message = dramatiq.Message(queue_name="default", actor_name=actor, args=args,
                                   kwargs={}, options={})
        self.broker.enqueue(message, delay=delay)

    def scrape(self, ok: Any) -> Tuple[str, Got]:
        return scrape_until(self.base, ok, timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DWorker]:
    from dramatiq.brokers.redis import RedisBroker

    tmp = tmp_path_factory.mktemp("dramatiq")
    server = RedisServer(tmp_path_factory.mktemp("dramatiq-redis"))
    server.start()
    (tmp / "dapp.py").write_text(APP)
    (tmp / "tmpdir").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(BROKER=server.url(0), JOBMETRICS_PORT=str(port), JOBMETRICS_ADDR="127.0.0.1",
               PYTHONPATH=str(tmp), TMPDIR=str(tmp / "tmpdir"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "dapp", "--processes", "2", "--threads", "2"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = RedisBroker(url=server.url(0))
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        yield DWorker(f"http://127.0.0.1:{port}", broker, proc, tmp, server)
    finally:
        broker.close()
        stop(proc, 30)
        server.stop()
    assert [d for d in os.listdir(tmp / "tmpdir") if d.startswith("jobmetrics-")] == []








def test_every_message_counted_once_from_one_endpoint(worker: DWorker) -> None:
    w = worker
    for _ in range(3):
        w.send("ok")
    for _ in range(2):
        w.send("bad")
    w.send("flaky", str(w.tmp / "flaky"))
    w.send("dec")
    w.send(WEIRD)
    text, got = w.scrape(lambda g: total(g, "ok", "success") == 3
                         and total(g, "bad", "fail") == 2
                         and total(g, "flaky", "success") == 1
                         and total(g, "inner", "success") == 1
                         and total(g, WEIRD, "success") == 1)
    assert [total(got, "ok", s) for s in ("success", "fail", "stop")] == [3, 0, 0]
    assert [total(got, "bad", s) for s in ("success", "fail", "stop")] == [0, 2, 0]
    assert [total(got, "flaky", s) for s in ("success", "fail", "stop")] == [1, 1, 0]
    assert got[(P + "task_retries_total", (("type", "flaky"),))] == 1
    assert got[(P + "task_retries_total", (("type", "bad"),))] == 0
    assert [total(got, "inner", s) for s in ("success", "fail", "stop")] == [1, 0, 0]
    assert total(got, "dec", "success") in (0, -1)
    for t in ("ok", "bad", "flaky", "inner", WEIRD):
        assert gauge(got, "running_task", t) == 0
        assert gauge(got, "pending_task", t) == 0
    promtool_check(text)
    (made,) = [d for d in os.listdir(w.tmp / "tmpdir") if d.startswith("jobmetrics-")]
    assert made.startswith("jobmetrics-dramatiq-")


def test_held_running_and_delayed_pending(worker: DWorker) -> None:
    w = worker
    release = w.tmp / "release"
    # Two: whichever process prefetched them, it has a thread for each.
    markers = [w.tmp / f"held-{k}" for k in range(2)]
    for p in markers:
        w.send("hold", str(p), str(release))
    for p in markers:
        wait_file(p)
    w.send("ok", delay=600_000)              # held in a worker's memory until its ETA
    _, got = w.scrape(lambda g: gauge(g, "running_task", "hold") == 2
                      and gauge(g, "pending_task", "ok") == 1)
    assert gauge(got, "running_task", "hold") == 2
    assert gauge(got, "pending_task", "ok") == 1
    release.write_text("")
    text, got = w.scrape(lambda g: total(g, "hold", "success") == 2
                         and gauge(g, "running_task", "hold") == 0)
    assert [total(got, "hold", s) for s in ("success", "fail", "stop")] == [2, 0, 0]
    assert gauge(got, "running_task", "hold") == 0
    assert gauge(got, "pending_task", "ok") == 1
    promtool_check(text)


def test_in_process_worker_records_into_its_metrics() -> None:
    from dramatiq.brokers.stub import StubBroker
    from prometheus_client import CollectorRegistry

    from jobmetrics import JobMetrics
    from jobmetrics.dramatiq import JobMetricsMiddleware
    from promcheck import value

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry)
    broker = StubBroker()
    mw = JobMetricsMiddleware(metrics=m)
    broker.add_middleware(mw)

    @dramatiq.actor(broker=broker, max_retries=0)
    def good() -> None:
        pass

    @dramatiq.actor(broker=broker, max_retries=0)
    def failing() -> None:
        raise ValueError("x")

    for _ in range(3):
        good.send()
    failing.send()
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert mw.directory is None
    assert value(registry, P + "task_total", type="good", status="success") == 3
    assert value(registry, P + "task_total", type="failing", status="fail") == 1
    assert value(registry, P + "running_task", type="good") == 0
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        JobMetricsMiddleware(metrics=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        JobMetricsMiddleware(port=-1)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def finished(got: Got, type: str) -> float:
    """Units of work ended for good: successes, and failures not retried."""
    fails = total(got, type, "fail") - got.get((P + "task_retries_total", (("type", type),)), 0)
    return total(got, type, "success") + fails


def test_example_as_documented(worker: DWorker) -> None:
    """docs/dramatiq.md: examples/dramatiq_app.py under ``dramatiq --processes 2``,
    messages sent by its own __main__."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(DRAMATIQ_REDIS_URL=worker.server.url(3), JOBMETRICS_PORT=str(port),
               JOBMETRICS_ADDR="127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "dramatiq_app", "--processes", "2", "--threads", "2"],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        sent = subprocess.run([sys.executable, "dramatiq_app.py", "6"], cwd=EXAMPLES, env=env,
                              capture_output=True, timeout=60, check=True)
        assert sent.stdout.decode().startswith("sent 6 replications")
        text, got = scrape_until(base, lambda g: finished(g, "replicate") == 6
                                 and total(g, "garbage_collect", "success") == 1, timeout=60)
        assert finished(got, "replicate") == 6
        assert total(got, "garbage_collect", "success") == 1
        promtool_check(text)
    finally:
        stop(proc, 30)
