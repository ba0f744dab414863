"""The `arq` layout, on jobs enqueued by arq's own client (and run by a real arq worker)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

pytest.importorskip("arq")

from arq import create_pool
from arq.connections import RedisSettings
from prometheus_client import CollectorRegistry

from exporter_support import RedisServer, command_counts
from jobmetrics.exporter import ARQ_DEFAULT_QUEUE, ArqLayout, RedisExporter, make_layout
from promcheck import promtool_check, samples, scrape, value
from servers import free_port
from test_exporter_cli import get, run, serve, stop

ODD = 'jobs "odd"\\ \n\u00e9\u2603'  # a queue name a label must escape
Job = Tuple[str, Dict[str, Any]]  # (queue, enqueue_job keyword arguments)


def enqueue(server: RedisServer, jobs: Sequence[Job], **pool: Any) -> List[str]:
    """Enqueue with arq's client (``create_pool(...).enqueue_job``); the job ids."""

    async def main() -> List[str]:
        redis = await create_pool(RedisSettings(host="127.0.0.1", port=server.port), **pool)
        try:
            ids = []
            for queue, kwargs in jobs:
                job = await redis.enqueue_job("work", _queue_name=queue, **kwargs)
                assert job is not None
                ids.append(job.job_id)
            return ids
        finally:
            await redis.aclose()

    return asyncio.run(main())


def ago(seconds: float) -> datetime:
    """A whole-second time ``seconds`` ago: arq scores it in exact milliseconds."""
    return datetime.fromtimestamp(int(time.time()) - seconds, timezone.utc)


def by_queue(got: Dict[Any, float], family: str) -> Dict[str, float]:
    return {dict(k[1])["queue"]: v for k, v in got.items() if k[0] == family}


def test_due_deferred_and_latency_across_queues(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    old = ago(40)
    enqueue(redis_server, [
        (ARQ_DEFAULT_QUEUE, {"_defer_until": old}),  # due 40 s ago: the oldest waiting
        (ARQ_DEFAULT_QUEUE, {}),
        (ARQ_DEFAULT_QUEUE, {}),
        (ARQ_DEFAULT_QUEUE, {"_defer_by": 600}),
        (ARQ_DEFAULT_QUEUE, {"_defer_by": 1200}),
        ("low", {}),
        ("low", {"_defer_by": 60}),
        ("later", {"_defer_by": 60}),  # only deferred jobs: nothing waits
    ])
    queues = [ARQ_DEFAULT_QUEUE, "low", "later", "never"]
    layout = ArqLayout(queues=queues)
    now = time.time()
    reading = layout.read(redis_server.client(), now=now)
    assert reading.queue_size == {ARQ_DEFAULT_QUEUE: 3, "low": 1, "later": 0, "never": 0}
    assert reading.scheduled == {
        (ARQ_DEFAULT_QUEUE,): 2, ("low",): 1, ("later",): 1, ("never",): 0}
    assert reading.concurrency == {(q,): 0 for q in queues}
    assert reading.queue_latency[ARQ_DEFAULT_QUEUE] == now - old.timestamp()
    low_score = redis_server.client().zrange("low", 0, 0, withscores=True)[0][1]
    assert reading.queue_latency["low"] == max(0.0, now - low_score / 1000)
    assert reading.queue_latency["later"] == reading.queue_latency["never"] == 0
    assert reading.errors == [] and reading.commands == len(queues)

    # The same through the exporter's families.
    RedisExporter(redis_server.url(), layout="arq", queues=queues, registry=registry)
    start = time.time()
    text = scrape(registry)
    got = samples(text)
    assert by_queue(got, "harbor_task_queue_size") == {
        ARQ_DEFAULT_QUEUE: 3, "low": 1, "later": 0, "never": 0}
    assert by_queue(got, "harbor_task_scheduled") == {
        ARQ_DEFAULT_QUEUE: 2, "low": 1, "later": 1, "never": 0}
    assert by_queue(got, "harbor_task_concurrency") == dict.fromkeys(queues, 0)
    latency = by_queue(got, "harbor_task_queue_latency")
    assert start - old.timestamp() <= latency[ARQ_DEFAULT_QUEUE] <= time.time() - old.timestamp()
    assert latency["later"] == latency["never"] == 0
    promtool_check(text)


def test_default_queue_when_none_is_named(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {}), ("other", {})])
    layout = make_layout("arq")
    assert isinstance(layout, ArqLayout) and layout.queues == (ARQ_DEFAULT_QUEUE,)
    RedisExporter(redis_server.url(), layout="arq", registry=registry)
    got = samples(scrape(registry))
    assert by_queue(got, "harbor_task_queue_size") == {ARQ_DEFAULT_QUEUE: 1}


def test_a_deferred_job_becomes_due_and_waits_from_its_due_time(
    redis_server: RedisServer,
) -> None:
    (job_id,) = enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {"_defer_by": 30})])
    r = redis_server.client()
    due = r.zscore(ARQ_DEFAULT_QUEUE, job_id) / 1000
    layout = ArqLayout()
    before = layout.read(r, now=due - 0.001)
    assert before.queue_size == {ARQ_DEFAULT_QUEUE: 0}
    assert before.scheduled == {(ARQ_DEFAULT_QUEUE,): 1}
    at = layout.read(r, now=due)  # due at its score exactly, as arq's worker takes it
    assert at.queue_size == {ARQ_DEFAULT_QUEUE: 1} and at.scheduled == {(ARQ_DEFAULT_QUEUE,): 0}
    assert at.queue_latency == {ARQ_DEFAULT_QUEUE: 0.0}
    after = layout.read(r, now=due + 12.5)
    assert after.queue_latency == {ARQ_DEFAULT_QUEUE: 12.5}


WORKER = """
import os
from arq.connections import RedisSettings


async def work(ctx):
    return "ok"


async def hold(ctx):
    # Runs until the test pushes to arq-test:release.
    await ctx["redis"].blpop("arq-test:release", timeout=60)


class WorkerSettings:
    functions = [work, hold]
    queue_name = os.environ["ARQ_TEST_QUEUE"]
    redis_settings = RedisSettings(host="127.0.0.1", port=int(os.environ["ARQ_TEST_PORT"]))
    max_jobs = 1
    poll_delay = 0.05
"""


def test_real_worker_running_job_is_concurrency_not_waiting(
    redis_server: RedisServer, registry: CollectorRegistry, tmp_path: Path
) -> None:
    queue = "arq:queue:work"

    async def fill() -> List[str]:
        redis = await create_pool(RedisSettings(host="127.0.0.1", port=redis_server.port))
        try:
            jobs = [await redis.enqueue_job("hold", _queue_name=queue),
                    await redis.enqueue_job("work", _queue_name=queue),
                    await redis.enqueue_job("work", _queue_name=queue)]
            return [j.job_id for j in jobs if j is not None]
        finally:
            await redis.aclose()

    held, second, _ = asyncio.run(fill())
    r = redis_server.client()
    RedisExporter(redis_server.url(), layout="arq", queues=[queue], registry=registry)
    assert value(registry, "harbor_task_queue_size", queue=queue) == 3
    (tmp_path / "arq_exporter_worker.py").write_text(WORKER)
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("arq")), "--burst",
         "arq_exporter_worker.WorkerSettings"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "ARQ_TEST_QUEUE": queue,
             "ARQ_TEST_PORT": str(redis_server.port)},
    )
    try:
        deadline = time.monotonic() + 60
        while value(registry, "harbor_task_concurrency", queue=queue) != 1:
            assert time.monotonic() < deadline, "the worker never started the job"
            assert worker.poll() is None, "the worker exited"
            time.sleep(0.05)
        assert r.exists("arq:in-progress:" + held)
        # The running job stays in arq's sorted set: it is running, not waiting, and the
        # latency is that of the oldest job still waiting.
        now = time.time()
        reading = ArqLayout(queues=[queue]).read(r, now=now)
        assert reading.queue_size == {queue: 2} and reading.concurrency == {(queue,): 1}
        assert reading.queue_latency == {
            queue: max(0.0, now - r.zscore(queue, second) / 1000)}
        text = scrape(registry)
        assert samples(text)[("harbor_task_queue_size", (("queue", queue),))] == 2
        promtool_check(text)
        r.rpush("arq-test:release", "go")
        assert worker.wait(60) == 0  # --burst: exits once the queue is empty
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    got = samples(scrape(registry))
    for family in ("queue_size", "queue_latency", "concurrency", "scheduled"):
        assert got[(f"harbor_task_{family}", (("queue", queue),))] == 0, family


def test_payloads_are_never_read(redis_server: RedisServer, registry: CollectorRegistry) -> None:
    # A custom serializer (JSON here), an expired or deleted job key, a payload that is
    # not arq's at all: the counts come from the sorted set alone.
    ids = enqueue(
        redis_server, [(ARQ_DEFAULT_QUEUE, {}), (ARQ_DEFAULT_QUEUE, {}),
                       (ARQ_DEFAULT_QUEUE, {"_defer_by": 60})],
        job_serializer=lambda d: json.dumps(d).encode(),
        job_deserializer=lambda b: json.loads(b),
    )
    r = redis_server.client()
    assert json.loads(r.get("arq:job:" + ids[0]))["f"] == "work"
    r.delete("arq:job:" + ids[0])  # expired: arq's worker drops it when it gets to it
    r.set("arq:job:" + ids[1], b"\x80\x05cos\nsystem\n(S'exit 1'\ntR.")  # never unpickled
    RedisExporter(redis_server.url(), layout="arq", registry=registry)
    text = scrape(registry)
    got = samples(text)
    assert got[("harbor_task_queue_size", (("queue", ARQ_DEFAULT_QUEUE),))] == 2
    assert got[("harbor_task_scheduled", (("queue", ARQ_DEFAULT_QUEUE),))] == 1
    assert got[("harbor_task_exporter_up", ())] == 1
    promtool_check(text)


def test_odd_queue_name_and_a_key_of_another_type(
    redis_server: RedisServer, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue(redis_server, [(ODD, {}), (ODD, {"_defer_by": 60}), ("good", {})])
    r = redis_server.client()
    r.rpush("a-list", "x")
    r.set("a-string", "x")
    RedisExporter(redis_server.url(), layout="arq",
                  queues=[ODD, "a-list", "good", "a-string"], registry=registry)
    with caplog.at_level(logging.WARNING, logger="jobmetrics.exporter"):
        text = scrape(registry)
        scrape(registry)
    got = samples(text)
    assert by_queue(got, "harbor_task_queue_size") == {ODD: 1, "good": 1}
    assert by_queue(got, "harbor_task_scheduled") == {ODD: 1, "good": 0}
    assert got[("harbor_task_exporter_up", ())] == 1
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 1, warnings  # logged once, for the first queue
    assert "'a-list' is a Redis list, not arq's sorted set" in warnings[0]
    promtool_check(text)


def test_huge_queue_costs_a_bounded_read(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    old = ago(600)
    enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {"_defer_until": old})])
    r = redis_server.client()
    base = int(time.time() * 1000) - 300_000
    big = 200_000
    for start in range(0, big, 20_000):
        r.zadd(ARQ_DEFAULT_QUEUE, {f"id-{i}": base + i for i in range(start, start + 20_000)})
    r.zadd(ARQ_DEFAULT_QUEUE, {f"later-{i}": base + 10**9 + i for i in range(500)})
    layout = ArqLayout(max_running=50)

    before = command_counts(r)
    now = time.time()
    reading = layout.read(r, now=now)
    sent = {k: v - before.get(k, 0) for k, v in command_counts(r).items() if k != "info"}
    assert reading.queue_size == {ARQ_DEFAULT_QUEUE: big + 1}
    assert reading.scheduled == {(ARQ_DEFAULT_QUEUE,): 500}
    assert reading.queue_latency == {ARQ_DEFAULT_QUEUE: now - old.timestamp()}
    # One EVAL: TYPE, two ZCOUNTs, one ZRANGEBYSCORE of max_running, max_running EXISTS.
    assert {k: v for k, v in sent.items() if v} == {
        "eval": 1, "type": 1, "zcount": 2, "zrangebyscore": 1, "exists": 50}

    # Every job checked runs (as marked by arq's worker): more may run beyond them, so
    # the latency is left out rather than guessed, and that is logged once.
    ids = [m.decode() for m in r.zrange(ARQ_DEFAULT_QUEUE, 0, 49)]
    for job_id in ids:
        r.psetex("arq:in-progress:" + job_id, 60_000, b"1")
    with caplog.at_level(logging.WARNING, logger="jobmetrics.exporter"):
        reading = layout.read(r, now=now)
        layout.read(r, now=now)
    assert reading.concurrency == {(ARQ_DEFAULT_QUEUE,): 50}
    assert reading.queue_size == {ARQ_DEFAULT_QUEUE: big + 1 - 50}
    assert reading.queue_latency == {} and reading.errors == [ARQ_DEFAULT_QUEUE]
    assert len(caplog.records) == 1
    assert "50 oldest due jobs of queue 'arq:queue' are all running" in caplog.messages[0]
    # One fewer running: the first job not running gives the latency again.
    r.delete("arq:in-progress:" + ids[-1])
    reading = layout.read(r, now=now)
    assert reading.concurrency == {(ARQ_DEFAULT_QUEUE,): 49}
    score = r.zscore(ARQ_DEFAULT_QUEUE, ids[-1])
    assert reading.queue_latency == {ARQ_DEFAULT_QUEUE: now - score / 1000}


def test_a_score_that_is_not_a_time_leaves_only_the_latency_out(
    redis_server: RedisServer,
) -> None:
    enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {}), ("good", {})])
    r = redis_server.client()
    r.zadd(ARQ_DEFAULT_QUEUE, {"not-arq": float("-inf")})  # no arq client writes this
    reading = ArqLayout(queues=[ARQ_DEFAULT_QUEUE, "good"]).read(r)
    assert reading.queue_size == {ARQ_DEFAULT_QUEUE: 2, "good": 1}
    assert list(reading.queue_latency) == ["good"]
    assert reading.errors == [ARQ_DEFAULT_QUEUE]


def test_redis_going_away_and_coming_back(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {})])
    exporter = RedisExporter(redis_server.url(), layout="arq", timeout=2, registry=registry)
    assert value(registry, "harbor_task_queue_size", queue=ARQ_DEFAULT_QUEUE) == 1
    redis_server.stop()
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0
    assert ("harbor_task_queue_size", (("queue", ARQ_DEFAULT_QUEUE),)) not in got
    redis_server.start()  # empty again: no persistence
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_queue_size", (("queue", ARQ_DEFAULT_QUEUE),))] == 0
    exporter.close()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"key_prefix": "arq:"}, ValueError, "key_prefix: arq's key names are fixed"),
    ({"max_running": 0}, ValueError, "max_running must be an int >= 1"),
    ({"max_running": True}, ValueError, "max_running must be an int >= 1"),
    ({"queues": "arq:queue"}, TypeError, "queues must be a sequence"),
    ({"queues": [""]}, ValueError, "queues must hold non-empty names"),
])
def test_bad_arguments(kwargs: Dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ArqLayout(**kwargs)


def test_cli_serves_the_arq_layout(redis_server: RedisServer) -> None:
    enqueue(redis_server, [
        (ARQ_DEFAULT_QUEUE, {"_defer_until": ago(30)}), (ARQ_DEFAULT_QUEUE, {}),
        (ARQ_DEFAULT_QUEUE, {"_defer_by": 600}), ("low", {}),
    ])
    port = free_port()
    proc = serve(
        [sys.executable, "-m", "jobmetrics.exporter", "--layout", "arq", "--redis-url",
         redis_server.url(), "--queue", ARQ_DEFAULT_QUEUE, "--queue", "low",
         "--port", str(port), "--addr", "127.0.0.1"],
        port,
    )
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        out = stop(proc)
    got = samples(text)
    assert by_queue(got, "harbor_task_queue_size") == {ARQ_DEFAULT_QUEUE: 2, "low": 1}
    assert by_queue(got, "harbor_task_scheduled") == {ARQ_DEFAULT_QUEUE: 1, "low": 0}
    assert by_queue(got, "harbor_task_concurrency") == {ARQ_DEFAULT_QUEUE: 0, "low": 0}
    assert 30 <= got[("harbor_task_queue_latency", (("queue", ARQ_DEFAULT_QUEUE),))] < 90
    assert got[("harbor_task_exporter_up", ())] == 1
    assert "layout arq" in out
    promtool_check(text)


def test_cli_default_queue_from_the_environment(redis_server: RedisServer) -> None:
    enqueue(redis_server, [(ARQ_DEFAULT_QUEUE, {}), ("b", {}), ("b", {})])
    port = free_port()
    extra: Optional[Dict[str, str]] = {
        "JOBMETRICS_EXPORTER_LAYOUT": "arq", "JOBMETRICS_EXPORTER_REDIS_URL": redis_server.url(),
        "JOBMETRICS_EXPORTER_PORT": str(port), "JOBMETRICS_EXPORTER_ADDR": "127.0.0.1",
    }
    proc = serve([sys.executable, "-m", "jobmetrics.exporter"], port, extra)
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop(proc)
    assert by_queue(samples(text), "harbor_task_queue_size") == {ARQ_DEFAULT_QUEUE: 1}
    proc2 = run(["--layout", "arq", "--key-prefix", "arq:", "--redis-url", redis_server.url()])
    assert proc2.returncode == 2
    assert "error: key_prefix: arq's key names are fixed" in proc2.stderr


def test_max_running_from_the_command_line_and_the_api(redis_server: RedisServer) -> None:
    from jobmetrics.exporter import RedisExporter

    exporter = RedisExporter(redis_server.url(), layout="arq", max_running=7, registry=None)
    try:
        assert exporter.layout.max_running == 7  # type: ignore[attr-defined]
    finally:
        exporter.close()
    bad = run(["--layout", "arq", "--max-running", "0", "--redis-url", redis_server.url()])
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--max-running" in bad.stderr
