"""Per-task overhead of the job framework integrations against the same worker without
them: Celery ``task.apply()``, RQ ``SimpleWorker`` in burst mode on a real redis-server,
Dramatiq ``StubBroker`` + ``Worker`` (and Dramatiq's own Prometheus middleware).

Run: .venv/bin/python bench/bench_integrations.py [celery] [rq] [rq-wrapper] [dramatiq]

Each case runs in a fresh process (Dramatiq's middleware sets PROMETHEUS_MULTIPROC_DIR in
os.environ; signals and the default registry are process-wide), best of 3 runs; the
cases of one framework alternate, 3 rounds, so a busy machine slows all of them alike.
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


CASES: Dict[str, Callable[[str], float]] = {
    "celery": celery_case, "rq": rq_case, "rq-wrapper": rq_wrapper_case,
    "dramatiq": dramatiq_case}
KINDS: Dict[str, List[str]] = {
    "celery": ["bare", "no-op receivers", "jobmetrics"],
    "rq": ["bare", "jobmetrics"],
    "rq-wrapper": ["bare", "jobmetrics"],
    "dramatiq": ["bare", "jobmetrics", "dramatiq-prometheus"],
}


def run_case(framework: str, kind: str, env: Dict[str, str]) -> float:
    out = subprocess.run([sys.executable, __file__, "--case", framework, kind], env=env,
                         capture_output=True, text=True, check=True)
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
    try:
        if "rq" in frameworks:
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
                    times[kind] = min(times[kind], run_case(fw, kind, env))
            bare = times["bare"]
            print(f"{fw:10} {'without':22} {bare * 1e6:14.1f}")
            for kind in KINDS[fw][1:]:
                t = times[kind]
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
