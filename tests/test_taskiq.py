"""jobmetrics.taskiq: ``taskiq worker tapp:broker --workers 2`` on a real redis-server
(taskiq-redis's ListQueueBroker), ``PROMETHEUS_MULTIPROC_DIR`` unset: one endpoint
(``JOBMETRICS_PORT``) for both worker processes, through the directory they made for
this start (gone when the command stops); and the middleware in this process on
taskiq's InMemoryBroker."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("taskiq")
pytest.importorskip("taskiq_redis")

from prometheus_client import CollectorRegistry
from taskiq import (
    InMemoryBroker,
    NoResultError,
    ScheduledTask,
    ScheduleSource,
    SimpleRetryMiddleware,
    SmartRetryMiddleware,
    TaskiqMessage,
    TaskiqMiddleware,
    TaskiqResult,
)
from taskiq.kicker import AsyncKicker
from taskiq_redis import ListQueueBroker

import jobmetrics.taskiq
from exporter_support import RedisServer, redis_server  # noqa: F401
from jobmetrics import JobMetrics
from jobmetrics.taskiq import JobMetricsMiddleware
from mpservers import P, stop
from promcheck import promtool_check, samples, scrape
from servers import free_port, wait_http
from worker_support import Got, gauge, run_example, total, wait_file

APP = '''
import asyncio, os
from taskiq import NoResultError, SimpleRetryMiddleware
from taskiq_redis import ListQueueBroker
from jobmetrics import JobMetrics
import jobmetrics.taskiq

broker = ListQueueBroker(os.environ["BROKER"], socket_timeout=None).with_middlewares(
    SimpleRetryMiddleware(default_retry_count=3))
m = JobMetrics()                                   # in memory: the processes share a directory
jobmetrics.taskiq.instrument(broker, m)            # port from JOBMETRICS_PORT

@broker.task(task_name="ok")
async def ok():
    return os.getpid()

@broker.task(task_name="bad")
async def bad():
    raise RuntimeError("bad")

@broker.task(task_name="flaky")
async def flaky(marker: str):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt")

@broker.task(task_name="slow")
async def slow():
    await asyncio.sleep(30)

@broker.task(task_name="skip")
async def skip():
    raise NoResultError()

@broker.task(task_name="dec")
@m.task("inner")                                   # counted once, under the innermost type
async def dec():
    pass

@m.task("inner_sync")
def work():
    return 1

@broker.task(task_name="sync_outer")
def sync_outer():                                  # in the worker's thread pool
    return work()

@broker.task(task_name="hold")
async def hold(marker: str, release: str):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        await asyncio.sleep(0.02)
'''

Send = Tuple[str, Dict[str, Any], List[Any]]


class TWorker:
    def __init__(self, base: str, proc: subprocess.Popen[bytes], tmp: Path,
                 server: RedisServer) -> None:
        self.base, self.proc, self.tmp, self.server = base, proc, tmp, server

    def send(self, *messages: Send) -> None:
        async def main() -> None:
            broker = ListQueueBroker(self.server.url(0), socket_timeout=None)
            await broker.startup()
            try:
                for name, labels, args in messages:
                    await AsyncKicker(name, broker, labels).kiq(*args)
            finally:
                await broker.shutdown()

        asyncio.run(main())

    def scrape(self, ok: Callable[[Got], bool], timeout: float = 30) -> Tuple[str, Got]:
        """Scrape until ``ok`` holds; a moment without an endpoint (its process killed,
        another taking over) is waited out."""
        deadline = time.monotonic() + timeout
        text, got = "", {}
        while True:
            try:
                with urllib.request.urlopen(self.base + "/metrics", timeout=5) as r:
                    text = r.read().decode()
                got = samples(text)
                if ok(got):
                    return text, got
            except (OSError, http.client.HTTPException):  # its server killed mid-answer
                pass
            if time.monotonic() > deadline:
                return text, got
            time.sleep(0.05)

    def made(self) -> List[str]:
        return [d for d in os.listdir(self.tmp / "tmpdir") if d.startswith("jobmetrics-")]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TWorker]:
    tmp = tmp_path_factory.mktemp("taskiq")
    server = RedisServer(tmp_path_factory.mktemp("taskiq-redis"))
    server.start()
    (tmp / "tapp.py").write_text(APP)
    (tmp / "tmpdir").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    path = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH", "")) if p)
    env.update(BROKER=server.url(0), JOBMETRICS_PORT=str(port), JOBMETRICS_ADDR="127.0.0.1",
               PYTHONPATH=path, TMPDIR=str(tmp / "tmpdir"))
    # One task at a time per process: two held tasks are in two processes.
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", "tapp:broker", "--workers", "2",
         "--max-async-tasks", "1", "--wait-tasks-timeout", "0.5"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = TWorker(f"http://127.0.0.1:{port}", proc, tmp, server)
    try:
        wait_http(w.base + "/metrics", timeout=60)
        yield w
    finally:
        stop(proc, 30)
        server.stop()
    deadline = time.monotonic() + 10  # the janitor removes it once the main process exits
    while w.made() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.made() == []


def test_every_outcome_counted_once(worker: TWorker) -> None:
    w = worker
    retry = {"retry_on_error": "true", "max_retries": "3"}
    w.send(*[("ok", {}, [])] * 3, *[("bad", {}, [])] * 2,
           ("flaky", retry, [str(w.tmp / "flaky")]), ("slow", {"timeout": "0.3"}, []),
           ("skip", {}, []), ("dec", {}, []), ("sync_outer", {}, []))
    text, got = w.scrape(lambda g: total(g, "ok", "success") == 3
                         and total(g, "bad", "fail") == 2
                         and total(g, "flaky", "success") == 1
                         and total(g, "slow", "fail") == 1
                         and total(g, "skip", "stop") == 1
                         and total(g, "inner", "success") == 1
                         and total(g, "inner_sync", "success") == 1)
    assert [total(got, "ok", s) for s in ("success", "fail", "stop")] == [3, 0, 0]
    assert [total(got, "bad", s) for s in ("success", "fail", "stop")] == [0, 2, 0]
    assert [total(got, "flaky", s) for s in ("success", "fail", "stop")] == [1, 1, 0]
    assert got[(P + "task_retries_total", (("type", "flaky"),))] == 1
    assert got[(P + "task_retries_total", (("type", "bad"),))] == 0
    # The task's timeout label: taskiq raises TimeoutError in it, a failure (as arq's).
    assert [total(got, "slow", s) for s in ("success", "fail", "stop")] == [0, 1, 0]
    assert [total(got, "skip", s) for s in ("success", "fail", "stop")] == [0, 0, 1]
    assert [total(got, "inner", s) for s in ("success", "fail", "stop")] == [1, 0, 0]
    assert [total(got, "inner_sync", s) for s in ("success", "fail", "stop")] == [1, 0, 0]
    for t in ("dec", "sync_outer"):
        assert total(got, t, "success") in (0, -1)
    for t in ("ok", "bad", "flaky", "slow", "skip", "dec", "inner", "sync_outer"):
        assert gauge(got, "running_task", t) == 0
    slow_time = got[(P + "task_process_time_seconds_sum", (("status", "fail"),
                                                           ("type", "slow")))]
    assert 0.25 < slow_time < 5
    promtool_check(text)


def test_one_endpoint_for_both_processes(worker: TWorker) -> None:
    w = worker
    release = w.tmp / "release"
    markers = [w.tmp / f"held-{k}" for k in range(2)]
    w.send(*[("hold", {}, [str(p), str(release)]) for p in markers])
    pids = {wait_file(p) for p in markers}
    assert len(pids) == 2                          # one held task in each process
    _, got = w.scrape(lambda g: gauge(g, "running_task", "hold") == 2)
    assert gauge(got, "running_task", "hold") == 2
    (made,) = w.made()
    assert made.startswith(f"jobmetrics-taskiq-{os.getuid()}-{w.proc.pid}-")
    files = os.listdir(w.tmp / "tmpdir" / made)
    assert {f"jobmetrics-{pid}.db" for pid in pids} <= set(files)
    release.write_text("")
    text, got = w.scrape(lambda g: total(g, "hold", "success") == 2
                         and gauge(g, "running_task", "hold") == 0)
    assert [total(got, "hold", s) for s in ("success", "fail", "stop")] == [2, 0, 0]
    assert gauge(got, "running_task", "hold") == 0
    promtool_check(text)


def n(got: Got, type: str, status: str) -> float:
    """``task_total{type, status}``, 0 when absent."""
    return max(0.0, total(got, type, status))


def test_killed_worker_and_restart(worker: TWorker) -> None:
    """A worker process killed mid-run takes its running count with it (the other one
    serves at once if it was the one serving); a reload (SIGHUP: every worker process
    stopped and started again) ends held runs as ``stop`` and keeps every count."""
    w = worker
    _, before = w.scrape(lambda g: True)
    marker = w.tmp / "killed"
    w.send(("hold", {}, [str(marker), str(w.tmp / "never")]))
    pid = wait_file(marker)
    w.scrape(lambda g: gauge(g, "running_task", "hold") == 1)
    os.kill(pid, signal.SIGKILL)
    _, got = w.scrape(lambda g: gauge(g, "running_task", "hold") == 0)
    assert gauge(got, "running_task", "hold") == 0
    assert [n(got, "hold", s) for s in ("success", "fail", "stop")] == [
        n(before, "hold", s) for s in ("success", "fail", "stop")]

    # Reload: the main process stops each worker (SIGTERM); taskiq waits
    # --wait-tasks-timeout for its running task, then leaves it.
    markers = [w.tmp / f"reloaded-{k}" for k in range(2)]
    w.send(*[("hold", {}, [str(p), str(w.tmp / "never")]) for p in markers])
    for p in markers:
        wait_file(p)
    _, got = w.scrape(lambda g: gauge(g, "running_task", "hold") == 2)
    assert gauge(got, "running_task", "hold") == 2
    os.kill(w.proc.pid, signal.SIGHUP)
    stops = n(before, "hold", "stop") + 2
    text, got = w.scrape(lambda g: total(g, "hold", "stop") == stops
                         and gauge(g, "running_task", "hold") == 0, timeout=60)
    assert total(got, "hold", "stop") == stops
    assert gauge(got, "running_task", "hold") == 0
    assert n(got, "ok", "success") == n(before, "ok", "success")
    assert n(got, "hold", "success") == n(before, "hold", "success")
    promtool_check(text)
    # The new worker processes run tasks and record into the same directory.
    w.send(("ok", {}, []))
    _, got = w.scrape(lambda g: n(g, "ok", "success") == n(before, "ok", "success") + 1)
    assert n(got, "ok", "success") == n(before, "ok", "success") + 1
    assert len(w.made()) == 1


# -- in this process, on InMemoryBroker -------------------------------------------------


def count(registry: CollectorRegistry, type_: str, status: str) -> float:
    return samples(scrape(registry)).get(
        (P + "task_total", (("status", status), ("type", type_))), 0.0)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(scrape(registry)).get((P + name, tuple(sorted(labels.items()))), 0.0)


async def drain(broker: InMemoryBroker) -> None:
    while broker._running_tasks:
        await asyncio.gather(*list(broker._running_tasks), return_exceptions=True)


def test_in_process_outcomes_and_durations() -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    # The retry middleware after ours: the order of the middlewares does not matter.
    broker = InMemoryBroker()
    mw = jobmetrics.taskiq.instrument(broker, m)
    broker.add_middlewares(SimpleRetryMiddleware(default_retry_count=3,
                                                 no_result_on_retry=False))
    attempts: List[int] = []

    @broker.task(task_name="nap")
    async def nap() -> None:
        await asyncio.sleep(0.05)

    @broker.task(task_name="flaky", retry_on_error=True, max_retries=3)
    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("later")

    @broker.task(task_name="cancelled")
    async def cancelled() -> None:
        raise asyncio.CancelledError

    @broker.task(task_name="timeout", timeout=0.05)
    async def too_slow() -> None:
        await asyncio.sleep(5)

    @broker.task(task_name="skipped")
    async def skipped() -> None:
        raise NoResultError()

    async def main() -> None:
        await broker.startup()
        await nap.kiq()
        await flaky.kiq()
        await cancelled.kiq()
        await too_slow.kiq()
        await skipped.kiq()
        await drain(broker)
        await broker.shutdown()

    asyncio.run(main())
    assert mw.directory is None and mw.server is None
    assert count(registry, "nap", "success") == 1
    nap_time = value(registry, "task_process_time_seconds_sum", type="nap",
                     status="success")
    assert 0.045 < nap_time < 1          # perf_counter, not the rounded execution_time
    assert [count(registry, "flaky", s) for s in ("success", "fail")] == [1, 2]
    assert value(registry, "task_retries_total", type="flaky") == 2
    assert count(registry, "cancelled", "stop") == 1
    assert count(registry, "timeout", "fail") == 1
    assert count(registry, "skipped", "stop") == 1
    for t in ("nap", "flaky", "cancelled", "timeout", "skipped"):
        assert value(registry, "running_task", type=t) == 0
    promtool_check(scrape(registry))


class Stash(ScheduleSource):
    """A schedule source that keeps what it is given."""

    def __init__(self) -> None:
        self.added: List[ScheduledTask] = []

    async def get_schedules(self) -> List[ScheduledTask]:
        return []

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        self.added.append(schedule)


def test_in_process_smart_retry_scheduled() -> None:
    """SmartRetryMiddleware with a schedule source sends nothing: the retry is seen by
    the error it replaces with NoResultError."""
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    stash = Stash()
    broker = InMemoryBroker().with_middlewares(SmartRetryMiddleware(
        default_retry_count=3, default_delay=60, schedule_source=stash))
    jobmetrics.taskiq.instrument(broker, m)

    @broker.task(task_name="later", retry_on_error=True)
    async def later() -> None:
        raise ConnectionError("later")

    @broker.task(task_name="last", retry_on_error=True, max_retries=1)
    async def last() -> None:
        raise ConnectionError("no more")

    async def main() -> None:
        await later.kiq()
        await last.kiq()
        await drain(broker)

    asyncio.run(main())
    assert [s.task_name for s in stash.added] == ["later"]
    assert count(registry, "later", "fail") == 1
    assert value(registry, "task_retries_total", type="later") == 1
    assert count(registry, "last", "fail") == 1   # max_retries reached: not retried
    assert value(registry, "task_retries_total", type="last") == 0


class Broken(TaskiqMiddleware):
    """Raises in post_execute, before ours (added earlier) is called."""

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        raise RuntimeError("broken middleware")


def test_in_process_inplace_broken_middleware_and_shutdown() -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    broker = InMemoryBroker(await_inplace=True)
    mw = JobMetricsMiddleware(metrics=m)
    broker.add_middlewares(mw)
    release = asyncio.Event()

    @broker.task(task_name="leaf")
    async def leaf() -> None:
        pass

    @broker.task(task_name="parent")
    async def parent() -> None:
        await leaf.kiq()                 # run in place, inside this run

    @broker.task(task_name="held")
    async def held() -> None:
        await release.wait()

    async def main() -> None:
        await broker.startup()
        await parent.kiq()
        broker.is_worker_process = True  # a worker shutting down with a run going
        run = asyncio.ensure_future(held.kiq())
        while value(registry, "running_task", type="held") != 1:
            await asyncio.sleep(0.01)
        await broker.shutdown()
        assert count(registry, "held", "stop") == 1
        release.set()
        await run                        # ends after the shutdown: not counted again

    asyncio.run(main())
    assert count(registry, "parent", "success") == 1
    assert count(registry, "leaf", "success") == 1
    assert count(registry, "held", "stop") == 1
    assert count(registry, "held", "success") == 0

    broker2 = InMemoryBroker()
    jobmetrics.taskiq.instrument(broker2, m)
    broker2.add_middlewares(Broken())

    @broker2.task(task_name="unlucky")
    async def unlucky() -> None:
        pass

    async def main2() -> None:
        await unlucky.kiq()
        await drain(broker2)

    asyncio.run(main2())
    # post_execute never came: the run ends with the receiver's task, as a failure.
    assert count(registry, "unlucky", "fail") == 1
    for t in ("parent", "leaf", "held", "unlucky"):
        assert value(registry, "running_task", type=t) == 0


def test_disabled_and_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")
    with pytest.raises(TypeError, match="broker must be"):
        jobmetrics.taskiq.instrument(object(), m)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        jobmetrics.taskiq.instrument(InMemoryBroker(), object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        JobMetricsMiddleware(metrics=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.taskiq.instrument(InMemoryBroker(), m, port=70000)
    with pytest.raises(TypeError, match="port"):
        JobMetricsMiddleware(m, port="8000")  # type: ignore[arg-type]
    monkeypatch.setenv("JOBMETRICS_PORT", "nope")
    with pytest.raises(ValueError, match="JOBMETRICS_PORT"):
        JobMetricsMiddleware(m)
    monkeypatch.delenv("JOBMETRICS_PORT")
    broker = InMemoryBroker()
    jobmetrics.taskiq.instrument(broker, m)
    with pytest.raises(ValueError, match="once"):
        jobmetrics.taskiq.instrument(broker, m)

    off = JobMetrics(registry=CollectorRegistry(), enabled=False)
    quiet = InMemoryBroker()
    jobmetrics.taskiq.instrument(quiet, off)

    @quiet.task(task_name="t")
    async def t() -> int:
        return 7

    async def main() -> Optional[int]:
        task = await t.kiq()
        await drain(quiet)
        return (await task.wait_result()).return_value  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 7


def test_serves_in_its_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker run in your own process (not under ``taskiq worker``) serves from it."""
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    port = free_port()
    monkeypatch.setenv("JOBMETRICS_ADDR", "127.0.0.1")
    broker = InMemoryBroker()
    mw = jobmetrics.taskiq.instrument(broker, m, port=port)
    broker.is_worker_process = True
    asyncio.run(broker.startup())
    try:
        assert mw.server is not None and mw.directory is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"harbor_jobservice_info" in r.read()
    finally:
        if mw.server is not None:
            mw.server[0].shutdown()
            mw.server[0].server_close()


def test_example_taskiq_worker(redis_server: RedisServer) -> None:  # noqa: F811
    """docs/taskiq.md: examples/taskiq_worker.py, as documented."""
    out = run_example("taskiq_worker.py", str(redis_server.port), timeout=90,
                      env={"JOBMETRICS_PORT": str(free_port()),
                           "JOBMETRICS_ADDR": "127.0.0.1"})
    assert 'task_total{status="success",type="resize"} 2.0' in out
    assert 'task_total{status="fail",type="broken"} 1.0' in out
    assert 'task_total{status="fail",type="send_mail"} 1.0' in out
    assert 'task_total{status="success",type="send_mail"} 1.0' in out
    assert 'task_retries_total{type="send_mail"} 1.0' in out
