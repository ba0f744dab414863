"""Per-task overhead of the job framework integrations against the same worker without
them: Celery ``task.apply()``, RQ ``SimpleWorker`` in burst mode on a real redis-server,
Dramatiq ``StubBroker`` + ``Worker`` (and Dramatiq's own Prometheus middleware), Huey
``huey.execute(task)``, Taskiq ``Receiver.callback`` on ``InMemoryBroker`` (and Taskiq's
``PrometheusMiddleware``), Procrastinate's worker on ``InMemoryConnector``, APScheduler's
executor path (and apscheduler-exporter), arq and SAQ burst workers on the redis-server,
and the RQ, arq and SAQ wrappers/hooks alone.

Run: .venv/bin/python bench/bench_integrations.py [celery] [rq] [rq-wrapper] [dramatiq]
    [huey] [taskiq] [procrastinate] [apscheduler] [apscheduler-pool] [arq] [arq-wrapper]
    [saq] [saq-hooks]

Each case runs in a fresh process (Dramatiq's and Taskiq's middlewares set
PROMETHEUS_MULTIPROC_DIR in os.environ; signals and the default registry are
process-wide), best of 3 runs; the cases of one framework alternate, 3 rounds, so a busy
machine slows all of them alike. Each jobmetrics case checks that it recorded every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

REPEAT = 3
ROUNDS = 3


def best(run: Callable[[], float]) -> float:
    return min(run() for _ in range(REPEAT))


# -- Celery ------------------------------------------------------------------------


def celery_case(kind: str, n: int = 5000) -> float:
    from celery import Celery

    app = Celery("bench", broker="memory://", backend="cache+memory://")
    if kind == "no-op receivers":
        # What Celery's own dispatch costs once task_prerun/task_postrun have receivers.
        from celery import signals

        signals.task_prerun.connect(lambda **_: None, weak=False)
        signals.task_postrun.connect(lambda **_: None, weak=False)
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.celery
        from jobmetrics import JobMetrics

        jobmetrics.celery.instrument(app, metrics=JobMetrics(registry=CollectorRegistry()))

    @app.task
    def trivial() -> int:
        return 1

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            trivial.apply()
        return (time.perf_counter() - t0) / n

    run()  # warm up
    return best(run)


# -- RQ ----------------------------------------------------------------------------


def rq_case(kind: str, n: int = 1000) -> float:
    import redis
    import rq

    port = int(os.environ["BENCH_REDIS_PORT"])
    conn = redis.Redis(port=port)
    conn.flushdb()
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.rq
        from jobmetrics import JobMetrics

        class Simple(jobmetrics.rq.SimpleWorker):
            jobmetrics = JobMetrics(registry=CollectorRegistry())

        worker_cls: type = Simple
    else:
        worker_cls = rq.SimpleWorker
    q = rq.Queue("bench", connection=conn)

    def run() -> float:
        for _ in range(n):
            q.enqueue("builtins.len", "x", result_ttl=0)
        w = worker_cls([q], connection=conn)
        t0 = time.perf_counter()
        w.work(burst=True, logging_level="WARNING")
        return (time.perf_counter() - t0) / n

    run()
    return best(run)


# -- Dramatiq ----------------------------------------------------------------------


def dramatiq_case(kind: str, n: int = 5000) -> float:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        from jobmetrics import JobMetrics
        from jobmetrics.dramatiq import JobMetricsMiddleware

        broker.add_middleware(JobMetricsMiddleware(metrics=JobMetrics(
            registry=CollectorRegistry())))
    elif kind == "dramatiq-prometheus":
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, max_retries=0)
    def trivial() -> None:
        pass

    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            trivial.send()
        broker.join("default")
        worker.join()
        return (time.perf_counter() - t0) / n

    try:
        run()
        return best(run)
    finally:
        worker.stop()


# -- the RQ wrapper alone -------------------------------------------------------------


def rq_wrapper_case(kind: str, n: int = 100_000) -> float:
    """``WorkerMixin.perform_job`` around a no-op ``perform_job``: what jobmetrics adds to
    each RQ job, without RQ's Redis round trips (whose noise hides it in the burst)."""
    from datetime import datetime, timezone

    from prometheus_client import CollectorRegistry

    from jobmetrics import JobMetrics
    from jobmetrics.rq import WorkerMixin

    class Job:
        func_name = "bench.trivial"
        origin = "default"
        enqueued_at = datetime.now(timezone.utc)

        def get_status(self, refresh: bool = True) -> str:
            return "finished"

    class Queue:
        name = "default"

    class Base:
        def perform_job(self, job: object, queue: object) -> bool:
            return True

    class Wrapped(WorkerMixin, Base):
        jobmetrics = JobMetrics(registry=CollectorRegistry())

    worker = Wrapped() if kind == "jobmetrics" else Base()
    job, queue = Job(), Queue()

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            worker.perform_job(job, queue)
        return (time.perf_counter() - t0) / n

    run()
    return best(run)


# -- shared by the cases below --------------------------------------------------------


def counted(registry: object, type_: str) -> float:
    """Successful runs of ``type_`` the integration recorded (the signals, hooks or
    middleware fired in the path that was timed)."""
    value = registry.get_sample_value(  # type: ignore[attr-defined]
        "harbor_jobservice_task_total", {"status": "success", "type": type_})
    return value or 0.0


def expect(registry: object, type_: str, runs: int) -> None:
    got = counted(registry, type_)
    if got != runs:
        raise SystemExit(f"{type_}: {got} runs recorded, {runs} run")


# -- Huey ----------------------------------------------------------------------------


def huey_case(kind: str, n: int = 5000) -> float:
    """``huey.execute(task)``, the consumer's call per task once it has dequeued and
    deserialized it (``Worker.process_task``), on a ``MemoryHuey``."""
    from huey import MemoryHuey

    huey = MemoryHuey("bench", results=False)
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.huey
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.huey.instrument(huey, JobMetrics(registry=registry))

    @huey.task()
    def trivial() -> int:
        return 1

    tasks = [trivial.s() for _ in range(n)]

    def run() -> float:
        execute = huey.execute
        t0 = time.perf_counter()
        for task in tasks:
            execute(task)
        return (time.perf_counter() - t0) / n

    run()
    t = best(run)
    if registry is not None:
        expect(registry, "trivial", n * (REPEAT + 1))
    return t


# -- Taskiq --------------------------------------------------------------------------


def taskiq_case(kind: str, n: int = 5000) -> float:
    """N messages through ``InMemoryBroker``'s ``Receiver.callback``, one asyncio task
    each, as ``Receiver.listen`` starts them (the messages are made beforehand)."""
    import asyncio

    from taskiq import InMemoryBroker

    broker = InMemoryBroker()
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.taskiq
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.taskiq.instrument(broker, JobMetrics(registry=registry))
    elif kind == "taskiq-prometheus":
        from pathlib import Path

        from taskiq.middlewares.prometheus_middleware import PrometheusMiddleware

        # It sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, as in a
        # `taskiq worker` process: its metrics live in multi-process files.
        broker.add_middlewares(PrometheusMiddleware(
            metrics_path=Path(os.environ["BENCH_WORKDIR"]) / "taskiq"))

    @broker.task(task_name="trivial")
    async def trivial() -> int:
        return 1

    async def main() -> float:
        await broker.startup()
        kicker = trivial.kicker()
        messages = [broker.formatter.dumps(kicker._prepare_message()).message
                    for _ in range(n)]
        callback = broker.receiver.callback

        async def run() -> float:
            t0 = time.perf_counter()
            await asyncio.gather(*[asyncio.create_task(callback(message=m))
                                   for m in messages])
            return (time.perf_counter() - t0) / n

        await run()
        t = min([await run() for _ in range(REPEAT)])
        await broker.shutdown()
        return t

    t = asyncio.run(main())
    if registry is not None:
        expect(registry, "trivial", n * (REPEAT + 1))
    return t


# -- Procrastinate -------------------------------------------------------------------


def procrastinate_case(kind: str, n: int = 1000, batch: int = 100) -> float:
    """A worker (``run_worker_async(wait=False)``) over deferred jobs on Procrastinate's
    ``InMemoryConnector``, in batches of ``batch`` (its fetch scans every job: batches
    keep that scan short); the defers are not timed, the worker's start and stop are."""
    import asyncio

    from procrastinate import App
    from procrastinate.testing import InMemoryConnector

    app = App(connector=InMemoryConnector())
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.procrastinate
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.procrastinate.instrument(app, JobMetrics(registry=registry))

    @app.task(name="trivial")
    async def trivial() -> int:
        return 1

    async def main() -> float:
        async with app.open_async():
            async def run() -> float:
                spent = 0.0
                for _ in range(n // batch):
                    for _ in range(batch):
                        await trivial.defer_async()
                    t0 = time.perf_counter()
                    await app.run_worker_async(wait=False, install_signal_handlers=False,
                                               listen_notify=False, delete_jobs="always")
                    spent += time.perf_counter() - t0
                return spent / n

            await run()
            return min([await run() for _ in range(REPEAT)])

    t = asyncio.run(main())
    if registry is not None:
        expect(registry, "trivial", n * (REPEAT + 1))
    return t


# -- APScheduler ---------------------------------------------------------------------


def _scheduler(kind: str, executor: object) -> tuple:
    from datetime import timezone

    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone=timezone.utc,
                                    executors={"default": executor})
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.apscheduler
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.apscheduler.instrument(scheduler, JobMetrics(registry=registry))
    elif kind == "apscheduler-exporter":
        from apscheduler_metrics import APSchedulerExporter
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        APSchedulerExporter(scheduler, registry=registry)
    scheduler.start(paused=True)  # its own loop never submits: the bench does
    return scheduler, registry


def _submit(scheduler: object, executor: object, job: object, when: object) -> None:
    """What ``BaseScheduler._process_jobs`` does for one due run of a job: submit it
    to its executor, then dispatch ``EVENT_JOB_SUBMITTED`` (the jobstore's read and
    update of ``next_run_time`` are left out: the same with and without)."""
    from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent

    executor.submit_job(job, [when])  # type: ignore[attr-defined]
    scheduler._dispatch_event(JobSubmissionEvent(  # type: ignore[attr-defined]
        EVENT_JOB_SUBMITTED, job.id, "default", [when]))  # type: ignore[attr-defined]


def _check_apscheduler(kind: str, registry: object, runs: int) -> None:
    if kind == "jobmetrics":
        expect(registry, "trivial", runs)
    elif kind == "apscheduler-exporter":
        got = registry.get_sample_value(  # type: ignore[attr-defined]
            "apscheduler_job_done_total", {"job_name": "trivial"})
        if got != runs:  # its start/end cache per job id races the thread pool
            print(f"note: apscheduler-exporter recorded {got:.0f} of {runs} runs")


def apscheduler_case(kind: str, n: int = 5000) -> float:
    """One due run at a time on APScheduler's ``DebugExecutor`` (``run_job`` in the
    calling thread, with its events): the executor path the integration wraps
    (``submit_job`` -> ``_do_submit_job`` -> the job's function), without a thread."""
    from datetime import datetime, timezone

    from apscheduler.executors.debug import DebugExecutor

    executor = DebugExecutor()
    scheduler, registry = _scheduler(kind, executor)
    job = scheduler.add_job(trivial_job, "interval", hours=1, name="trivial",
                            id="trivial", misfire_grace_time=None)

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            _submit(scheduler, executor, job, datetime.now(timezone.utc))
        return (time.perf_counter() - t0) / n

    try:
        run()
        t = best(run)
    finally:
        scheduler.shutdown(wait=True)
    _check_apscheduler(kind, registry, n * (REPEAT + 1))
    return t


def apscheduler_pool_case(kind: str, n: int = 2000) -> float:
    """N due runs, one each of N jobs, submitted to the default ``ThreadPoolExecutor``
    (10 threads), timed until the last ``EVENT_JOB_EXECUTED``."""
    import threading
    from datetime import datetime, timezone

    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.executors.pool import ThreadPoolExecutor

    executor = ThreadPoolExecutor()
    scheduler, registry = _scheduler(kind, executor)
    jobs = [scheduler.add_job(trivial_job, "interval", hours=1, name="trivial",
                              id=f"trivial-{i}", misfire_grace_time=None)
            for i in range(n)]
    lock = threading.Lock()
    done = threading.Event()
    left = [0]

    def executed(event: object) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    scheduler.add_listener(executed, EVENT_JOB_EXECUTED)

    def run() -> float:
        left[0] = n
        done.clear()
        t0 = time.perf_counter()
        for job in jobs:
            _submit(scheduler, executor, job, datetime.now(timezone.utc))
        if not done.wait(60):
            raise SystemExit("apscheduler-pool: runs did not finish")
        return (time.perf_counter() - t0) / n

    try:
        run()
        t = best(run)
    finally:
        scheduler.shutdown(wait=True)
    _check_apscheduler(kind, registry, n * (REPEAT + 1))
    return t


def trivial_job() -> int:
    return 1


# -- arq -----------------------------------------------------------------------------


async def trivial_arq(ctx: Dict[str, object]) -> int:
    return 1


def arq_case(kind: str, n: int = 1000) -> float:
    """An arq ``Worker`` in burst mode (``max_jobs=10``, ``poll_delay=1 ms``,
    ``keep_result=0``) over N jobs enqueued beforehand on a real redis-server."""
    import asyncio

    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    port = int(os.environ["BENCH_REDIS_PORT"])
    settings = RedisSettings(host="127.0.0.1", port=port)
    functions: Dict[str, object] = {"functions": [trivial_arq]}
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.arq
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.arq.instrument(functions, JobMetrics(registry=registry))

    async def main() -> float:
        pool = await create_pool(settings)
        await pool.flushdb()

        async def run() -> float:
            for _ in range(n):
                await pool.enqueue_job("trivial_arq")
            worker = Worker(functions=functions["functions"],  # type: ignore[arg-type]
                            redis_pool=pool, burst=True, poll_delay=0.001,
                            keep_result=0, handle_signals=False)
            t0 = time.perf_counter()
            await worker.main()
            spent = time.perf_counter() - t0
            if worker.jobs_complete != n:
                raise SystemExit(f"arq: {worker.jobs_complete} of {n} jobs complete")
            return spent / n

        await run()
        t = min([await run() for _ in range(REPEAT)])
        await pool.aclose()
        return t

    t = asyncio.run(main())
    if registry is not None:
        expect(registry, "trivial_arq", n * (REPEAT + 1))
    return t


def arq_wrapper_case(kind: str, n: int = 100_000) -> float:
    """The coroutine ``instrument()`` puts in arq's ``Function``, awaited with the ctx
    dict arq passes (``job_id``, ``job_try``, ``enqueue_time``, ``score``), against
    awaiting the job function itself: what jobmetrics adds to each arq job."""
    import asyncio
    from datetime import datetime, timezone

    from prometheus_client import CollectorRegistry

    import jobmetrics.arq
    from jobmetrics import JobMetrics

    registry = CollectorRegistry()
    call = trivial_arq
    if kind == "jobmetrics":
        settings: Dict[str, object] = {"functions": [trivial_arq]}
        jobmetrics.arq.instrument(settings, JobMetrics(registry=registry))
        call = settings["functions"][0].coroutine  # type: ignore[index]
    score = int(time.time() * 1000)
    ctx = {"redis": None, "job_id": "x", "job_try": 1,
           "enqueue_time": datetime.now(timezone.utc), "score": score}

    async def main() -> float:
        async def run() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await call(ctx)
            return (time.perf_counter() - t0) / n

        await run()
        return min([await run() for _ in range(REPEAT)])

    t = asyncio.run(main())
    if kind == "jobmetrics":
        expect(registry, "trivial_arq", n * (REPEAT + 1))
    return t


# -- SAQ -----------------------------------------------------------------------------


async def trivial_saq(ctx: Dict[str, object]) -> int:
    return 1


def saq_case(kind: str, n: int = 1000) -> float:
    """A SAQ ``Worker`` in burst mode (``concurrency=10``, ``dequeue_timeout=10 ms``)
    over N jobs enqueued beforehand on a real redis-server."""
    import asyncio

    from saq import Queue, Worker

    port = int(os.environ["BENCH_REDIS_PORT"])
    registry = None
    metrics = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        metrics = JobMetrics(registry=registry)

    async def main() -> float:
        queue = Queue.from_url(f"redis://127.0.0.1:{port}")
        await queue.connect()
        await queue.redis.flushdb()  # type: ignore[attr-defined]

        async def run() -> float:
            for _ in range(n):
                await queue.enqueue("trivial_saq")
            worker = Worker(queue, [trivial_saq], burst=True, dequeue_timeout=0.01)
            if metrics is not None:
                import jobmetrics.saq

                jobmetrics.saq.instrument(worker, metrics)
            t0 = time.perf_counter()
            await worker.start()
            return (time.perf_counter() - t0) / n

        await run()
        t = min([await run() for _ in range(REPEAT)])
        await queue.disconnect()
        return t

    t = asyncio.run(main())
    if registry is not None:
        expect(registry, "trivial_saq", n * (REPEAT + 1))
    return t


def saq_hooks_case(kind: str, n: int = 100_000) -> float:
    """SAQ's own ``Worker._before_process``/``_after_process`` around a job (as
    ``Worker.process`` calls them, with the ctx it makes), on a real ``saq.Job`` of a
    real (not started) ``Worker``: with ``instrument(worker)`` they run jobmetrics'
    hooks; without, none. No Redis traffic in either."""
    import asyncio

    from saq import Job, Queue, Worker
    from saq.job import Status

    queue = Queue.from_url("redis://127.0.0.1:1")  # never connected
    worker = Worker(queue, [trivial_saq])
    registry = None
    if kind == "jobmetrics":
        from prometheus_client import CollectorRegistry

        import jobmetrics.saq
        from jobmetrics import JobMetrics

        registry = CollectorRegistry()
        jobmetrics.saq.instrument(worker, JobMetrics(registry=registry))
    now = int(time.time() * 1000)
    job = Job(function="trivial_saq", queue=queue, queued=now, started=now, attempts=1,
              status=Status.COMPLETE)

    async def main() -> float:
        before, after = worker._before_process, worker._after_process

        async def run() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                context = {**worker.context, "job": job}
                await before(context)
                await trivial_saq(context)
                await after(context)
            return (time.perf_counter() - t0) / n

        await run()
        return min([await run() for _ in range(REPEAT)])

    t = asyncio.run(main())
    if registry is not None:
        expect(registry, "trivial_saq", n * (REPEAT + 1))
    return t


CASES: Dict[str, Callable[[str], float]] = {
    "celery": celery_case, "rq": rq_case, "rq-wrapper": rq_wrapper_case,
    "dramatiq": dramatiq_case, "huey": huey_case, "taskiq": taskiq_case,
    "procrastinate": procrastinate_case, "apscheduler": apscheduler_case,
    "apscheduler-pool": apscheduler_pool_case, "arq": arq_case,
    "arq-wrapper": arq_wrapper_case, "saq": saq_case, "saq-hooks": saq_hooks_case}
KINDS: Dict[str, List[str]] = {
    "celery": ["bare", "no-op receivers", "jobmetrics"],
    "rq": ["bare", "jobmetrics"],
    "rq-wrapper": ["bare", "jobmetrics"],
    "dramatiq": ["bare", "jobmetrics", "dramatiq-prometheus"],
    "huey": ["bare", "jobmetrics"],
    "taskiq": ["bare", "jobmetrics", "taskiq-prometheus"],
    "procrastinate": ["bare", "jobmetrics"],
    "apscheduler": ["bare", "jobmetrics", "apscheduler-exporter"],
    "apscheduler-pool": ["bare", "jobmetrics", "apscheduler-exporter"],
    "arq": ["bare", "jobmetrics"],
    "arq-wrapper": ["bare", "jobmetrics"],
    "saq": ["bare", "jobmetrics"],
    "saq-hooks": ["bare", "jobmetrics"],
}
#: Peers not in the bench extra (their pins clash with the test extra's): installed by hand,
#: ``pip install --no-deps apscheduler-exporter``; a row is skipped when missing.
PEERS = ("apscheduler-exporter",)
#: The cases that need the redis-server the bench starts.
ON_REDIS = ("rq", "arq", "saq")


def run_case(framework: str, kind: str, env: Dict[str, str]) -> float:
    out = subprocess.run([sys.executable, __file__, "--case", framework, kind], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0 and "ModuleNotFoundError" in out.stderr and kind in PEERS:
        # A peer that is not installed: its row is left out, the others run.
        return float("nan")
    out.check_returncode()
    for line in out.stdout.splitlines():
        if line.startswith("note:"):
            print(f"  ({framework}, {kind}) {line}")
    return float(out.stdout.split()[-1])


def main(argv: List[str]) -> None:
    if argv[:1] == ["--case"]:
        print(CASES[argv[1]](argv[2]))
        return
    frameworks = argv or list(CASES)
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    redis_proc = None
    workdir = tempfile.mkdtemp(prefix="bench-integrations-")
    env["dramatiq_prom_db"] = workdir
    env["BENCH_WORKDIR"] = workdir
    try:
        if any(fw in ON_REDIS for fw in frameworks):
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            redis_proc = subprocess.Popen(
                [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
                stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            env["BENCH_REDIS_PORT"] = str(port)
        print(f"{'framework':10} {'worker':22} {'per task (us)':>14} {'overhead (us)':>14} "
              f"{'framework / overhead':>21}")
        for fw in frameworks:
            times = {kind: float("inf") for kind in KINDS[fw]}
            for _ in range(ROUNDS):
                for kind in KINDS[fw]:
                    t = run_case(fw, kind, env)
                    times[kind] = t if t != t else min(times[kind], t)  # NaN: not installed
            bare = times["bare"]
            print(f"{fw:10} {'without':22} {bare * 1e6:14.1f}")
            for kind in KINDS[fw][1:]:
                t = times[kind]
                if t != t:
                    print(f"{fw:10} {kind:22} (not installed: pip install --no-deps {kind})")
                    continue
                extra = t - bare
                if bare < 1e-6:  # the wrapper alone: no framework cost to compare with
                    ratio = f"{'-':>21}"
                elif extra > 0:
                    ratio = f"{bare / extra:21.0f}"
                else:
                    ratio = f"{'(within noise)':>21}"
                print(f"{fw:10} {kind:22} {t * 1e6:14.1f} {extra * 1e6:14.1f} {ratio}")
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
