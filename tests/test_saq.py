"""jobmetrics.saq on real SAQ workers and a real redis-server: the ``saq`` command with
``--workers 2`` (one endpoint for both processes, through the directory they make for
that start, gone when the command stops), the command with one worker, and a
``saq.Worker`` in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

pytest.importorskip("saq")

from prometheus_client import CollectorRegistry
from saq import Queue, Worker

import jobmetrics.saq
from exporter_support import RedisServer, redis_server  # noqa: F401
from jobmetrics import JobMetrics
from mpservers import P
from promcheck import promtool_check, samples, scrape
from servers import free_port, scrape_until, wait_http
from worker_support import Got, gauge, run_example, total, wait_file

APP = '''
import asyncio, os
from saq import Queue
import jobmetrics, jobmetrics.saq

m = jobmetrics.default_metrics()          # in memory: the processes share a directory


async def ok(ctx):
    return os.getpid()


async def boom(ctx):
    raise RuntimeError("boom")


async def flaky(ctx):
    if ctx["job"].attempts == 1:
        raise RuntimeError("first attempt")
    return "done"


async def hold(ctx, marker, release):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        await asyncio.sleep(0.02)


async def forever(ctx, marker):            # aborted, or cancelled at its timeout
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    await asyncio.sleep(600)


@m.task("inner")                           # counted once, under the innermost type
async def dec(ctx):
    pass


@m.task("inner_sync")                      # in SAQ's thread pool
def sync_dec(ctx):
    pass


def sync_ok(ctx):
    return 1


async def quick(ctx):
    pass


settings = jobmetrics.saq.instrument({     # port from JOBMETRICS_PORT
    "queue": Queue.from_url(os.environ["REDIS_URL"]),
    "functions": [ok, boom, flaky, hold, forever, ("dec", dec), ("sync_dec", sync_dec),
                  sync_ok, quick, ('we"ird\\nname', quick)],
    "concurrency": int(os.environ.get("CONCURRENCY", "1")),
    "timers": {"abort": 0.1},
})
'''

WEIRD = 'we"ird\nname'
SRC = str(Path(jobmetrics.saq.__file__).resolve().parent.parent)   # this checkout's


def enqueue(url: str, *jobs: Tuple[str, Dict[str, Any]]) -> List[str]:
    """Enqueue ``(function, kwargs)`` jobs (SAQ splits job fields from arguments);
    their keys."""
    async def go() -> List[str]:
        q = Queue.from_url(url)
        await q.connect()
        try:
            keys = []
            for name, kwargs in jobs:
                job = await q.enqueue(name, **kwargs)
                assert job is not None
                keys.append(job.key)
            return keys
        finally:
            await q.disconnect()

    return asyncio.run(go())


def abort(url: str, key: str) -> None:
    async def go() -> None:
        q = Queue.from_url(url)
        await q.connect()
        try:
            job = await q.job(key)
            assert job is not None
            await job.abort("stopped by the test")
        finally:
            await q.disconnect()

    asyncio.run(go())


def queue_size(got: Got, queue: str = "default") -> float:
    return got.get((P + "queue_size", (("queue", queue),)), -1.0)


def waits(got: Got, queue: str = "default") -> float:
    return got.get((P + "queue_wait_seconds_count", (("queue", queue),)), 0.0)


def statuses(got: Got, type: str) -> List[float]:
    return [total(got, type, s) for s in ("success", "fail", "stop")]


class Command:
    def __init__(self, base: str, url: str, tmp: Path) -> None:
        self.base, self.url, self.tmp = base, url, tmp

    def scrape(self, ok: Any) -> Tuple[str, Got]:
        return scrape_until(self.base, ok, timeout=30)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, as a terminal's Ctrl-C or a service
    manager reaches every worker process."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # pragma: no cover - a hung worker
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise


def start_command(tmp: Path, server: RedisServer, workers: int) -> Tuple[
        subprocess.Popen[bytes], Command]:
    (tmp / "sapp.py").write_text(APP)
    (tmp / "tmpdir").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(REDIS_URL=server.url(0), JOBMETRICS_PORT=str(port),
               JOBMETRICS_ADDR="127.0.0.1", PYTHONPATH=os.pathsep.join([str(tmp), SRC]),
               TMPDIR=str(tmp / "tmpdir"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "saq", "sapp.settings", "--workers", str(workers)],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
    except BaseException:
        stop_group(proc)
        raise
    return proc, Command(f"http://127.0.0.1:{port}", server.url(0), tmp)


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Command]:
    """``saq sapp.settings --workers 2``, one job at a time in each process."""
    tmp = tmp_path_factory.mktemp("saq")
    server = RedisServer(tmp_path_factory.mktemp("saq-redis"))
    server.start()
    try:
        proc, cmd = start_command(tmp, server, 2)
        try:
            yield cmd
        finally:
            stop_group(proc)
    finally:
        server.stop()
    assert [d for d in os.listdir(tmp / "tmpdir") if d.startswith("jobmetrics-")] == []


def test_every_outcome_counted_once_from_one_endpoint(command: Command) -> None:
    c = command
    _, before = c.scrape(lambda g: True)
    enqueue(c.url, *[("ok", {})] * 3, *[("boom", {})] * 2, ("flaky", {"retries": 2}),
            ("dec", {}), ("sync_dec", {}), ("sync_ok", {}), (WEIRD, {}))
    text, got = c.scrape(lambda g: total(g, "ok", "success") == 3
                         and total(g, "boom", "fail") == 2
                         and total(g, "flaky", "success") == 1
                         and total(g, "inner", "success") == 1
                         and total(g, "inner_sync", "success") == 1
                         and total(g, "sync_ok", "success") == 1
                         and total(g, WEIRD, "success") == 1
                         and queue_size(g) == 0)     # read again within a second
    assert statuses(got, "ok") == [3, 0, 0]
    assert statuses(got, "boom") == [0, 2, 0]
    assert statuses(got, "flaky") == [1, 1, 0]
    assert got[(P + "task_retries_total", (("type", "flaky"),))] == 1
    assert got[(P + "task_retries_total", (("type", "boom"),))] == 0
    assert statuses(got, "inner") == [1, 0, 0]
    assert statuses(got, "inner_sync") == [1, 0, 0]
    assert total(got, "dec", "success") in (0, -1)
    assert total(got, "sync_dec", "success") in (0, -1)
    assert statuses(got, "sync_ok") == [1, 0, 0]
    assert statuses(got, WEIRD) == [1, 0, 0]
    # One wait per job: a retry's is not observed (SAQ keeps no time of the re-queue).
    assert waits(got) - waits(before) == 10
    for t in ("ok", "boom", "flaky", "inner", "inner_sync", "sync_ok", WEIRD):
        assert gauge(got, "running_task", t) == 0
    assert queue_size(got) == 0
    promtool_check(text)
    (made,) = [d for d in os.listdir(c.tmp / "tmpdir") if d.startswith("jobmetrics-")]
    assert made.startswith("jobmetrics-saq-")


def test_abort_is_stop_and_timeout_is_fail(command: Command) -> None:
    c = command
    aborted, timed = c.tmp / "aborted", c.tmp / "timed"
    # Past its timeout twice: the first attempt is retried, the second fails for good.
    key, _ = enqueue(c.url, ("forever", {"marker": str(aborted), "timeout": 0}),
                     ("forever", {"marker": str(timed), "timeout": 1, "retries": 2}))
    wait_file(aborted)
    wait_file(timed)
    abort(c.url, key)
    text, got = c.scrape(lambda g: total(g, "forever", "stop") == 1
                         and total(g, "forever", "fail") == 2
                         and gauge(g, "running_task", "forever") == 0)
    assert statuses(got, "forever") == [0, 2, 1]
    assert got[(P + "task_retries_total", (("type", "forever"),))] == 1
    assert gauge(got, "running_task", "forever") == 0
    promtool_check(text)


def test_both_processes_running_and_one_backlog(command: Command) -> None:
    c = command
    release = c.tmp / "release"
    markers = [c.tmp / f"held-{k}" for k in range(2)]
    # One job at a time in each process: the two holds run in both.
    enqueue(c.url, *[("hold", {"marker": str(p), "release": str(release)})
                     for p in markers])
    pids = {wait_file(p) for p in markers}
    assert len(pids) == 2
    enqueue(c.url, *[("quick", {})] * 3)         # wait in Redis: no process is free
    _, got = c.scrape(lambda g: gauge(g, "running_task", "hold") == 2
                      and queue_size(g) == 3)
    assert gauge(got, "running_task", "hold") == 2
    assert queue_size(got) == 3                  # published by one process, not both
    release.write_text("")
    text, got = c.scrape(lambda g: total(g, "hold", "success") == 2
                         and total(g, "quick", "success") == 3 and queue_size(g) == 0)
    assert statuses(got, "hold") == [2, 0, 0]
    assert statuses(got, "quick") == [3, 0, 0]
    assert gauge(got, "running_task", "hold") == 0
    assert gauge(got, "running_task", "quick") == 0
    assert queue_size(got) == 0
    promtool_check(text)


def test_one_worker_command_serves_without_a_directory(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    proc, c = start_command(tmp_path, redis_server, 1)
    try:
        enqueue(c.url, ("ok", {}), ("ok", {}), ("boom", {}))
        text, got = c.scrape(lambda g: total(g, "ok", "success") == 2
                             and total(g, "boom", "fail") == 1)
        assert statuses(got, "ok") == [2, 0, 0]
        assert statuses(got, "boom") == [0, 1, 0]
        assert waits(got) == 3
        promtool_check(text)
        assert os.listdir(tmp_path / "tmpdir") == []
    finally:
        stop_group(proc)


def test_worker_in_process_chains_hooks_and_shutdown_stops(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")
    port = free_port()
    monkeypatch.setenv("JOBMETRICS_ADDR", "127.0.0.1")
    seen: List[str] = []
    started = asyncio.Event()

    async def slow(ctx: Dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(600)

    async def fast(ctx: Dict[str, Any]) -> None:
        pass

    def user_before(ctx: Dict[str, Any]) -> None:      # sync: SAQ runs it in its pool
        seen.append("before " + ctx["job"].function)

    async def user_after(ctx: Dict[str, Any]) -> None:
        seen.append("after " + ctx["job"].function)

    async def user_startup(ctx: Dict[str, Any]) -> None:
        seen.append("startup")

    def user_shutdown(ctx: Dict[str, Any]) -> None:
        seen.append("shutdown")

    async def main() -> Tuple[str, str, str]:
        queue = Queue.from_url(redis_server.url(0))
        await queue.connect()
        worker: Any = Worker(queue, [("slow", slow), ("fast", fast)], concurrency=1,
                             before_process=user_before, after_process=[user_after],
                             startup=user_startup, shutdown=user_shutdown)
        assert jobmetrics.saq.instrument(worker, m, port=port) is worker
        with pytest.raises(ValueError, match="instrumented already"):
            jobmetrics.saq.instrument(worker, m)
        run = asyncio.ensure_future(worker.start())
        held = await queue.enqueue("slow", timeout=0)
        assert held is not None
        await asyncio.wait_for(started.wait(), 10)
        await queue.enqueue("fast")
        await queue.enqueue("fast")
        deadline = asyncio.get_running_loop().time() + 10
        while True:                                     # refreshed every second
            during = scrape(registry)
            if samples(during).get((P + "queue_size", (("queue", "default"),))) == 2:
                break
            assert asyncio.get_running_loop().time() < deadline, during
            await asyncio.sleep(0.05)
        served = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                           timeout=10).read().decode())
        await worker.stop()                             # cancels the held job
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        again = await queue.job(held.key)
        assert again is not None and again.status == "queued"   # SAQ runs it again later
        server = worker.context["jobmetrics_server"]
        server[0].shutdown()
        server[0].server_close()
        await queue.disconnect()
        return during, served, scrape(registry)

    during, served, text = asyncio.run(main())
    got = samples(during)
    assert got[(P + "running_task", (("type", "slow"),))] == 1
    assert f'{P}running_task{{type="slow"}} 1.0' in served
    got = samples(text)
    assert statuses(got, "slow") == [0, 0, 1]
    assert got[(P + "task_retries_total", (("type", "slow"),))] == 0
    assert got[(P + "running_task", (("type", "slow"),))] == 0
    assert (P + "queue_size", (("queue", "default"),)) not in got   # the worker is gone
    assert seen == ["startup", "before slow", "after slow", "shutdown"]
    promtool_check(text)


def test_bad_arguments() -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")

    async def job(ctx: Dict[str, Any]) -> None:
        pass

    with pytest.raises(TypeError, match="target must be"):
        jobmetrics.saq.instrument(object(), m)
    with pytest.raises(TypeError, match="target must be"):
        jobmetrics.saq.instrument("module.settings", m)
    with pytest.raises(ValueError, match="no functions"):
        jobmetrics.saq.instrument({"functions": []}, m)
    with pytest.raises(TypeError, match="metrics must be"):
        jobmetrics.saq.instrument({"functions": [job]}, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        jobmetrics.saq.instrument({"functions": [job]}, m, port=70000)
    with pytest.raises(TypeError, match="port"):
        jobmetrics.saq.instrument({"functions": [job]}, m, port="8001")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="before_process"):
        jobmetrics.saq.instrument({"functions": [job], "before_process": 3}, m)
    settings: Dict[str, Any] = {"functions": [job]}
    jobmetrics.saq.instrument(settings, m)
    with pytest.raises(ValueError, match="instrumented already"):
        jobmetrics.saq.instrument(settings, m)


def test_bad_env_port(monkeypatch: pytest.MonkeyPatch) -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="")
    monkeypatch.setenv("JOBMETRICS_PORT", "eighty")
    with pytest.raises(ValueError, match="JOBMETRICS_PORT"):
        jobmetrics.saq.instrument({"functions": [print]}, m)


def test_example_saq_worker(redis_server: RedisServer) -> None:  # noqa: F811
    """docs/saq.md: examples/saq_worker.py, as documented."""
    out = run_example("saq_worker.py", str(redis_server.port))
    root = Path(__file__).resolve().parent.parent
    documented = (root / "docs" / "saq.md").read_text().split("```text\n")[1].split("```")[0]
    assert set(out.splitlines()) == set(documented.splitlines())
    assert len(documented.splitlines()) == 5


def test_hooks_never_raise_into_the_worker() -> None:
    """A context SAQ never passes, or a job jobmetrics cannot read: nothing raised,
    nothing left running."""
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry, multiprocess_dir="")

    async def job(ctx: Dict[str, Any]) -> None:
        pass

    settings: Dict[str, Any] = {"functions": [job]}
    jobmetrics.saq.instrument(settings, m)

    class Odd:
        function = 3          # not a name
        attempts = "x"

    async def main() -> None:
        for ctx in ({}, {"job": object()}, {"job": Odd()}, {"job": None}):
            for hook in ("startup", "before_process", "after_process", "shutdown"):
                await settings[hook][0](ctx)

    asyncio.run(main())
    got = samples(scrape(registry))
    assert all(v == 0 for (name, _), v in got.items() if name == P + "running_task")
    assert got.get((P + "task_total", (("status", "stop"), ("type", "unknown")))) == 1
