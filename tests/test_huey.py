"""``jobmetrics.huey.instrument`` under the real ``huey_consumer`` (``-k thread -w 2`` and
``-k process -w 2``) on a real redis-server, ``PROMETHEUS_MULTIPROC_DIR`` unset: one
endpoint (``JOBMETRICS_PORT``) for every worker, exact counts per Huey outcome, gauges
back to 0, the queue's backlog; the in-process paths (interrupted from another thread,
one task id run twice at once) and the bad arguments; the documented example."""

from __future__ import annotations

import datetime
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import pytest

from exporter_support import RedisServer
from mpservers import P, stop
from promcheck import promtool_check
from servers import free_port, scrape_until, wait_http
from worker_support import Got, gauge, total

pytest.importorskip("huey")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

APP = '''
import os, time, uuid
from huey import RedisHuey
from huey.exceptions import CancelExecution, RetryTask
from prometheus_client import CollectorRegistry
from jobmetrics import JobMetrics
import jobmetrics.huey

huey = RedisHuey("jm", url=os.environ["BROKER"])
m = JobMetrics(registry=CollectorRegistry())   # in memory: -k process gets a directory
jobmetrics.huey.instrument(huey, metrics=m)    # port from JOBMETRICS_PORT

def once(marker):
    """True the first time for this marker (across processes)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False

@huey.task()
def ok():
    return os.getpid()

@huey.task()
def bad():
    raise RuntimeError("bad")

@huey.task(retries=1)
def flaky(marker):
    if once(marker):
        raise RuntimeError("first attempt")

@huey.task()
def again(marker):
    if once(marker):
        raise RetryTask()

@huey.task(retries=1)
def cancel(marker):
    raise CancelExecution(retry=False)

@huey.task(retries=1)
def cancel_retry(marker):
    if once(marker):
        raise CancelExecution(retry=True)

@huey.task(retries=1)
def vetoed():
    pass

@huey.pre_execute()
def veto(task):
    if task.name == "vetoed":
        raise CancelExecution()

@huey.task(context=True, timeout=0.2)
def slow(task):
    while True:
        task.check_timeout()
        time.sleep(0.01)

@huey.task()
@huey.lock_task("the-lock")
def locked():
    pass

@huey.task()
def gone():
    pass

@huey.task()
def late():
    pass

@huey.task()
@m.task("inner")
def dec():
    pass

@huey.task(name='we"ird\\nname')
def weird():
    pass

@huey.task()
def later():
    pass

@huey.task()
def hold(directory, release):
    with open(os.path.join(directory, uuid.uuid4().hex), "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.01)
'''

WEIRD = 'we"ird\nname'
KINDS = ("thread", "process")


def env_for(tmp: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT / "src")]), **extra)
    return env


def statuses(got: Got, type: str) -> List[float]:
    return [total(got, type, s) for s in ("success", "fail", "stop")]


def retries(got: Got, type: str) -> float:
    return got.get((P + "task_retries_total", (("type", type),)), -1.0)


def backlog(got: Got) -> float:
    return got.get((P + "queue_size", (("queue", "jm"),)), -1.0)


class Consumer:
    def __init__(self, kind: str, base: str, app: ModuleType, proc: subprocess.Popen[bytes],
                 tmp: Path) -> None:
        self.kind, self.base, self.app, self.proc, self.tmp = kind, base, app, proc, tmp

    def scrape(self, ok: Callable[[Got], bool]) -> Tuple[str, Got]:
        return scrape_until(self.base, ok, timeout=30)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[RedisServer, Path, Any]]:
    """One redis-server, and the app module imported here to enqueue (its metrics are
    its own registry's; nothing runs in this process)."""
    tmp = tmp_path_factory.mktemp("huey")
    server = RedisServer(tmp_path_factory.mktemp("huey-redis"))
    server.start()
    (tmp / "happ.py").write_text(APP)
    old = os.environ.get("BROKER")
    os.environ["BROKER"] = server.url(0)
    sys.path.insert(0, str(tmp))
    try:
        app = importlib.import_module("happ")
    finally:
        sys.path.remove(str(tmp))
        if old is None:
            del os.environ["BROKER"]
        else:
            os.environ["BROKER"] = old
    try:
        yield server, tmp, app
    finally:
        sys.modules.pop("happ", None)
        server.stop()


@pytest.fixture(scope="module", params=KINDS)
def consumer(request: pytest.FixtureRequest,
             shared: Tuple[RedisServer, Path, Any]) -> Iterator[Consumer]:
    server, base_tmp, app = shared
    kind: str = request.param
    tmp = base_tmp / kind
    tmp.mkdir()
    (tmp / "tmpdir").mkdir()
    server.client().flushall()
    port = free_port()
    env = env_for(base_tmp, BROKER=server.url(0), JOBMETRICS_PORT=str(port),
                  JOBMETRICS_ADDR="127.0.0.1", TMPDIR=str(tmp / "tmpdir"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "happ.huey", "-k", kind, "-w", "2",
         "-n", "-l", str(tmp / "consumer.log")],
        cwd=base_tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        yield Consumer(kind, f"http://127.0.0.1:{port}", app, proc, tmp)
    finally:
        stop(proc, 30)
    made = [d for d in os.listdir(tmp / "tmpdir") if d.startswith("jobmetrics-")]
    assert made == [], made


def test_every_outcome_counted_once(consumer: Consumer) -> None:
    a, tmp = consumer.app, consumer.tmp
    lock = a.huey.lock_task("the-lock")
    lock.acquire()
    try:
        for _ in range(3):
            a.ok()
        for _ in range(2):
            a.bad()
        a.flaky(str(tmp / "flaky"))
        a.again(str(tmp / "again"))
        a.cancel(str(tmp / "cancel"))
        a.cancel_retry(str(tmp / "cancel_retry"))
        a.vetoed()
        a.slow()
        a.locked()
        revoked = a.gone.s()
        a.huey.revoke(revoked)
        a.huey.enqueue(revoked)
        a.huey.enqueue(a.late.s(expires=datetime.datetime(2000, 1, 1)))
        a.dec()
        a.weird()
        text, got = consumer.scrape(
            lambda g: statuses(g, "ok")[0] == 3 and statuses(g, "bad")[1] == 2
            and statuses(g, "flaky")[0] == 1 and statuses(g, "again")[0] == 1
            and statuses(g, "cancel")[2] == 1 and statuses(g, "cancel_retry")[0] == 1
            and statuses(g, "vetoed")[2] == 1 and statuses(g, "slow")[1] == 1
            and statuses(g, "locked")[2] == 1 and statuses(g, "gone")[2] == 1
            and statuses(g, "late")[2] == 1 and statuses(g, "inner")[0] == 1
            and statuses(g, WEIRD)[0] == 1)
    finally:
        lock.clear()
    assert statuses(got, "ok") == [3, 0, 0]
    assert statuses(got, "bad") == [0, 2, 0] and retries(got, "bad") == 0
    # An attempt Huey retries is fail and +1, whatever ended it.
    assert statuses(got, "flaky") == [1, 1, 0] and retries(got, "flaky") == 1
    assert statuses(got, "again") == [1, 1, 0] and retries(got, "again") == 1      # RetryTask
    assert statuses(got, "cancel_retry") == [1, 1, 0] and retries(got, "cancel_retry") == 1
    assert statuses(got, "cancel") == [0, 0, 1] and retries(got, "cancel") == 0
    # Cancelled by a pre-execute hook: stop, never retried (though it has retries).
    assert statuses(got, "vetoed") == [0, 0, 1] and retries(got, "vetoed") == 0
    assert statuses(got, "slow") == [0, 1, 0]                                     # timeout
    assert statuses(got, "locked") == [0, 0, 1]
    assert statuses(got, "gone") == [0, 0, 1]                                     # revoked
    assert statuses(got, "late") == [0, 0, 1]                                     # expired
    assert statuses(got, "inner") == [1, 0, 0]
    assert statuses(got, "dec") in ([0, 0, 0], [-1, -1, -1])
    assert statuses(got, WEIRD) == [1, 0, 0]
    for t in ("ok", "bad", "flaky", "again", "cancel", "cancel_retry", "vetoed", "slow",
              "locked", "gone", "late", "inner", "dec", WEIRD):
        assert gauge(got, "running_task", t) == 0
        assert gauge(got, "pending_task", t) == 0
    assert got[(P + "info", (("node", got_node(got)), ("pool", consumer.kind),
                             ("workers", "2")))] == 1
    promtool_check(text)
    assert len(jm_dirs(consumer)) == (1 if consumer.kind == "process" else 0)


def got_node(got: Got) -> str:
    (node,) = [dict(labels)["node"] for (name, labels) in got if name == P + "info"]
    return node


def wait_files(directory: Path, n: int) -> List[int]:
    deadline = time.monotonic() + 30
    while True:
        names = sorted(directory.iterdir()) if directory.exists() else []
        pids = [int(p.read_text()) for p in names if p.read_text()]
        if len(pids) >= n:
            return pids
        assert time.monotonic() < deadline, f"{directory}: {len(pids)} of {n} runs started"
        time.sleep(0.02)


def test_one_task_id_twice_running_and_the_backlog(consumer: Consumer) -> None:
    a, tmp = consumer.app, consumer.tmp
    started, release = tmp / "twice", tmp / "release-twice"
    started.mkdir()
    task = a.hold.s(str(started), str(release))
    a.huey.enqueue(task)
    a.huey.enqueue(task)              # the same task id, run by both workers at once
    pids = wait_files(started, 2)
    if consumer.kind == "process":
        assert len(set(pids)) == 2
    for _ in range(3):
        a.later()                     # both workers are busy: these wait in Redis
    text, got = consumer.scrape(lambda g: gauge(g, "running_task", "hold") == 2
                                and backlog(g) == 3)
    assert gauge(got, "running_task", "hold") == 2
    assert backlog(got) == 3
    promtool_check(text)
    release.write_text("")
    text, got = consumer.scrape(lambda g: statuses(g, "hold")[0] == 2
                                and statuses(g, "later")[0] == 3 and backlog(g) == 0)
    assert statuses(got, "hold") == [2, 0, 0]
    assert statuses(got, "later") == [3, 0, 0]
    assert gauge(got, "running_task", "hold") == 0
    assert backlog(got) == 0
    promtool_check(text)


def test_process_worker_interrupted_is_stop(consumer: Consumer) -> None:
    """SIGTERM to a worker process running a task: Huey interrupts the task
    (``interrupted``) and the worker goes on."""
    if consumer.kind != "process":
        pytest.skip("threads are interrupted from the main thread: the in-process test")
    a, tmp = consumer.app, consumer.tmp
    started, release = tmp / "interrupted", tmp / "release-interrupted"
    started.mkdir()
    a.hold(str(started), str(release))
    (pid,) = wait_files(started, 1)
    os.kill(pid, signal.SIGTERM)
    text, got = consumer.scrape(lambda g: statuses(g, "hold")[2] == 1
                                and gauge(g, "running_task", "hold") == 0)
    assert statuses(got, "hold")[2] == 1
    assert gauge(got, "running_task", "hold") == 0
    a.ok()                            # the workers still run tasks
    text, got = consumer.scrape(lambda g: statuses(g, "ok")[0] >= 1)
    assert statuses(got, "ok")[0] >= 1
    assert gauge(got, "running_task", "hold") == 0
    promtool_check(text)


def test_process_worker_killed_mid_task_leaves_no_running(consumer: Consumer) -> None:
    """A worker process killed (SIGKILL) mid-task sends no signal: its running count
    leaves with it (gauges are summed over live processes); the other worker goes on."""
    if consumer.kind != "process":
        pytest.skip("a thread cannot be killed alone")
    a, tmp = consumer.app, consumer.tmp
    started, release = tmp / "killed", tmp / "release-killed"
    started.mkdir()
    _, before = consumer.scrape(lambda g: True)
    a.hold(str(started), str(release))
    (pid,) = wait_files(started, 1)
    consumer.scrape(lambda g: gauge(g, "running_task", "hold") == 1)
    os.kill(pid, signal.SIGKILL)
    text, got = consumer.scrape(lambda g: gauge(g, "running_task", "hold") == 0)
    assert gauge(got, "running_task", "hold") == 0
    assert statuses(got, "hold") == statuses(before, "hold")
    ok_before = statuses(got, "ok")[0]
    a.ok()
    text, got = consumer.scrape(lambda g: statuses(g, "ok")[0] == ok_before + 1)
    assert statuses(got, "ok")[0] == ok_before + 1
    promtool_check(text)


def jm_dirs(consumer: Consumer) -> List[str]:
    return [d for d in os.listdir(consumer.tmp / "tmpdir") if d.startswith("jobmetrics-")]


def test_process_restart_on_sighup_starts_a_new_directory(consumer: Consumer) -> None:
    """SIGHUP: Huey exec()s the consumer again (no exit handlers run); the directory of
    the last start is removed, the new start makes its own and counts from 0."""
    if consumer.kind != "process":
        pytest.skip("only process workers have a directory")
    (old,) = jm_dirs(consumer)
    os.kill(consumer.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while old in jm_dirs(consumer) or not jm_dirs(consumer):
        assert time.monotonic() < deadline, jm_dirs(consumer)
        time.sleep(0.05)
    wait_http(consumer.base + "/metrics", timeout=30)
    consumer.app.ok()
    text, got = consumer.scrape(lambda g: statuses(g, "ok")[0] == 1)
    assert statuses(got, "ok") == [1, 0, 0]
    assert len(jm_dirs(consumer)) == 1
    promtool_check(text)


# -- in this process -----------------------------------------------------------------


def test_in_process_interrupted_from_another_thread_and_overlapping_runs() -> None:
    """The thread consumer's main thread sends ``interrupted`` for the tasks its threads
    run when it stops (``notify_interrupted_tasks``): each ends once, as stop, and the
    task that then finishes is not counted again. Two runs of one task id in two threads
    stay apart."""
    from huey import MemoryHuey
    from prometheus_client import CollectorRegistry

    import jobmetrics.huey
    from jobmetrics import JobMetrics
    from promcheck import value

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, process_collectors=False)
    huey = MemoryHuey("local")
    inst = jobmetrics.huey.instrument(huey, metrics=m)
    release = threading.Event()
    entered = threading.Barrier(3)

    @huey.task()
    def held() -> None:
        entered.wait(10)
        release.wait(10)

    task = held.s()
    twin = huey.deserialize_task(huey.serialize_task(task))   # the same id, another run
    assert twin.id == task.id and twin is not task
    threads = [threading.Thread(target=huey.execute, args=(t,)) for t in (task, twin)]
    for t in threads:
        t.start()
    entered.wait(10)
    assert value(registry, P + "running_task", type="held") == 2
    # Huey keeps the tasks in flight in a set, where the twins are equal: only the run
    # it holds is interrupted; the other goes on and ends on its own.
    huey.notify_interrupted_tasks()          # as Consumer.run() does on its way out
    assert value(registry, P + "running_task", type="held") == 1
    assert value(registry, P + "task_total", type="held", status="stop") == 1
    release.set()
    for t in threads:
        t.join(10)
    assert value(registry, P + "task_total", type="held", status="stop") == 1
    assert value(registry, P + "task_total", type="held", status="success") == 1
    assert value(registry, P + "running_task", type="held") == 0
    assert inst.directory is None and inst.server is None


def test_in_process_consumer_and_bad_arguments() -> None:
    from huey import MemoryHuey
    from prometheus_client import CollectorRegistry

    import jobmetrics.huey
    from jobmetrics import JobMetrics
    from promcheck import value

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, process_collectors=False)
    huey = MemoryHuey("local")
    inst = jobmetrics.huey.instrument(huey, metrics=m)

    @huey.task()
    def add(a: int, b: int) -> int:
        return a + b

    results = [add(k, 1) for k in range(4)]
    consumer = huey.create_consumer(workers=2, periodic=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer.start()                         # sets this process's signal handlers
    try:
        assert [r.get(blocking=True, timeout=10) for r in results] == [1, 2, 3, 4]
    finally:
        consumer.stop(graceful=True)
        for s, h in handlers.items():
            signal.signal(s, h)
    assert value(registry, P + "task_total", type="add", status="success") == 4
    assert value(registry, P + "running_task", type="add") == 0
    assert value(registry, P + "queue_size", queue="local") == 0
    assert inst.directory is None

    with pytest.raises(ValueError, match="instrumented already"):
        jobmetrics.huey.instrument(huey, metrics=m)
    with pytest.raises(TypeError, match=r"huey must be a huey\.Huey"):
        jobmetrics.huey.instrument(object(), metrics=m)
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        jobmetrics.huey.instrument(MemoryHuey("x"), metrics=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.huey.instrument(MemoryHuey("x"), metrics=m, port=70000)
    with pytest.raises(TypeError, match="port"):
        jobmetrics.huey.instrument(MemoryHuey("x"), metrics=m, port="80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="consumer must be a Consumer"):
        inst.attach(MemoryHuey("y").create_consumer())
    os.environ["JOBMETRICS_PORT"] = "nope"
    try:
        with pytest.raises(ValueError, match="JOBMETRICS_PORT"):
            jobmetrics.huey.instrument(MemoryHuey("x"), metrics=m)
    finally:
        del os.environ["JOBMETRICS_PORT"]


def test_scrape_never_waits_long_for_a_stalled_redis(redis_server: RedisServer) -> None:
    """``queue_size`` is read off the scrape's thread: while Redis sleeps (``DEBUG
    SLEEP``) a scrape takes about ``BACKLOG_WAIT`` and shows the last value read. A
    ``Consumer`` made directly, attached by hand."""
    from huey import RedisHuey
    from huey.consumer import Consumer as HueyConsumer
    from prometheus_client import CollectorRegistry

    import jobmetrics.huey
    from jobmetrics import JobMetrics
    from promcheck import value

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, process_collectors=False)
    huey = RedisHuey("stall", url=redis_server.url(0))
    inst = jobmetrics.huey.instrument(huey, metrics=m)

    @huey.task()
    def waits() -> None:
        pass

    for _ in range(2):
        waits()
    consumer = inst.attach(HueyConsumer(huey, workers=0, periodic=False))
    assert inst.attach(consumer) is consumer            # once
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer.start()                                     # no workers: the tasks wait
    try:
        assert value(registry, P + "queue_size", queue="stall") == 2
        sleeper = threading.Thread(
            target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "1.5"))
        sleeper.start()
        time.sleep(0.3)                                  # the server is asleep now
        t0 = time.monotonic()
        assert value(registry, P + "queue_size", queue="stall") == 2
        took = time.monotonic() - t0
        assert took + 0.05 >= jobmetrics.huey.BACKLOG_WAIT and took < 1.5, took
        sleeper.join(10)
        assert value(registry, P + "queue_size", queue="stall") == 2
    finally:
        consumer.stop()
        for s, h in handlers.items():
            signal.signal(s, h)


def test_disabled_metrics_record_nothing_and_change_nothing() -> None:
    from huey import MemoryHuey
    from prometheus_client import CollectorRegistry, generate_latest

    import jobmetrics.huey
    from jobmetrics import JobMetrics

    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, enabled=False)
    huey = MemoryHuey("off", immediate=True)
    jobmetrics.huey.instrument(huey, metrics=m)

    @huey.task()
    def double(x: int) -> int:
        return 2 * x

    @huey.task()
    def broken() -> None:
        raise KeyError("x")

    assert double(21).get() == 42
    from huey.exceptions import TaskException

    with pytest.raises(TaskException, match="KeyError"):
        broken().get()
    assert "task_total" not in generate_latest(registry).decode()


def test_a_failure_while_recording_never_reaches_the_task(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from huey import MemoryHuey
    from prometheus_client import CollectorRegistry

    import jobmetrics.huey
    from jobmetrics import JobMetrics

    m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
    huey = MemoryHuey("broken-metrics", immediate=True)
    jobmetrics.huey.instrument(huey, metrics=m)

    def fails(task_type: str) -> None:
        raise RuntimeError("metrics broke")

    monkeypatch.setattr(m, "task_series", fails)

    @huey.task()
    def double(x: int) -> int:
        return 2 * x

    with caplog.at_level("ERROR", logger="jobmetrics"):
        assert double(21).get() == 42
    assert "huey signal executing failed" in caplog.text
    assert "huey" not in [r.name for r in caplog.records]   # Huey saw no failing receiver


def finished(got: Got, type: str) -> float:
    """Units of work ended for good: successes, and failures not retried."""
    return statuses(got, type)[0] + statuses(got, type)[1] - max(retries(got, type), 0)


def test_example_as_documented(shared: Tuple[RedisServer, Path, Any]) -> None:
    """docs/huey.md: examples/huey_worker.py under ``huey_consumer -k process -w 2``, tasks
    sent by its own __main__."""
    server = shared[0]
    port = free_port()
    env = env_for(EXAMPLES, HUEY_REDIS_URL=server.url(3), JOBMETRICS_PORT=str(port),
                  JOBMETRICS_ADDR="127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "huey_worker.huey", "-k", "process",
         "-w", "2"], cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics", timeout=60)
        sent = subprocess.run([sys.executable, "huey_worker.py", "6"], cwd=EXAMPLES, env=env,
                              capture_output=True, timeout=60, check=True)
        assert sent.stdout.decode().startswith("sent 6 replications")
        text, got = scrape_until(base, lambda g: finished(g, "replicate") == 6
                                 and statuses(g, "garbage_collect")[0] == 1, timeout=60)
        assert finished(got, "replicate") == 6
        assert statuses(got, "garbage_collect")[0] == 1
        promtool_check(text)
    finally:
        stop(proc, 30)
