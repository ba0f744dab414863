"""A small job service on the standard library alone, to see every family move.

``python -m jobmetrics demo`` (or ``jobmetrics demo``) serves, on one port:

* ``POST /jobs?type=replication|gc|scan`` (or ``GET /jobs/submit?type=...``): queue a job;
  with ``&wait=1`` the answer waits until the job has run and tells how it ended;
* ``GET /jobs``: the queue length;
* ``GET /metrics``: the metrics.

Jobs go through an instrumented ``queue.Queue`` to an instrumented thread pool whose
workers run them with random durations and failures; the demo also submits jobs itself
and calls its own API, so every family moves without any client: bursts of jobs keep a
backlog in the queue (``queue_size`` above 0) and a few clients wait on their jobs
(``wait=1``), so requests are in flight at any moment.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs
from urllib.request import Request, urlopen

import jobmetrics
from jobmetrics import JobMetrics, Stopped
from jobmetrics.exposition import _serve

__all__ = ["JOB_TYPES", "Demo", "run"]

JOB_TYPES = ("replication", "gc", "scan")

Job = Tuple[str, int]
StartResponse = Callable[..., Any]


class Demo:
    """The demo service: an HTTP API, a job queue, a worker pool and its metrics."""

    def __init__(self, metrics: JobMetrics, workers: int = 4, fail_rate: float = 0.1,
                 clients: int = 3) -> None:
        self.metrics = metrics
        self.clients = clients
        # job id -> [event set when the job has run, its status]: only for jobs a
        # request waits on (wait=1).
        self._waiters: Dict[int, List[Any]] = {}
        self._waiters_lock = threading.Lock()
        self.fail_rate = fail_rate
        self.stop_event = threading.Event()
        self.jobs: queue.Queue[Tuple[str, int]] = metrics.instrument_queue(
            queue.Queue(), name="jobs",
                                             type_of=lambda job: job[0])
        self.pool = metrics.instrument_executor(ThreadPoolExecutor(workers,
                                                                   thread_name_prefix="job"))
        self.workers = workers
        self._ids = iter(range(1, 1 << 62))
        self._tasks: Dict[str, Callable[[int], None]] = {
            "replication": metrics.task("replication")(self._replicate),
            "gc": metrics.task("gc")(self._gc),
            "scan": metrics.task("scan")(self._scan),
        }
        metrics.set_info(pool="demo", workers=workers)

    # -- the jobs ------------------------------------------------------------------

    def _work(self, seconds: float) -> None:
        if random.random() < self.fail_rate:
            time.sleep(seconds / 2)
            raise RuntimeError("the registry did not answer")
        time.sleep(seconds)

    def _replicate(self, job_id: int) -> None:
        self._work(random.uniform(0.05, 0.4))

    def _gc(self, job_id: int) -> None:
        if random.random() < 0.05:
            raise Stopped("stopped by an operator")
        self._work(random.uniform(0.1, 0.6))

    def _scan(self, job_id: int) -> None:
        self._work(random.uniform(0.02, 0.2))

    def submit(self, job_type: str) -> int:
        """Queue one job of ``job_type``; return its id."""
        if job_type not in self._tasks:
            raise ValueError(job_type)
        job_id = next(self._ids)
        self.jobs.put((job_type, job_id))
        return job_id

    def submit_and_wait(self, job_type: str, timeout: float = 30.0) -> Tuple[int, str]:
        """Queue one job and wait until it has run: its id and ``success``, ``fail``,
        ``stop`` (or ``queued`` if it has not run within ``timeout`` seconds)."""
        if job_type not in self._tasks:
            raise ValueError(job_type)
        job_id = next(self._ids)
        waiter: List[Any] = [threading.Event(), "queued"]
        with self._waiters_lock:
            self._waiters[job_id] = waiter
        self.jobs.put((job_type, job_id))
        try:
            waiter[0].wait(timeout)
        finally:
            with self._waiters_lock:
                self._waiters.pop(job_id, None)
        return job_id, str(waiter[1])

    def _ran(self, job_id: int, future: Future[None]) -> None:
        with self._waiters_lock:
            waiter = self._waiters.get(job_id)
        if waiter is None:
            return
        exc = None if future.cancelled() else future.exception()
        waiter[1] = ("stop" if future.cancelled() or isinstance(exc, Stopped)
                     else "fail" if exc is not None else "success")
        waiter[0].set()

    def dispatch(self) -> None:
        """Move jobs from the queue to the worker pool (one thread), keeping the pool
        at most two jobs ahead of its workers so the queue is where jobs wait."""
        sem = threading.BoundedSemaphore(self.workers * 2)
        while not self.stop_event.is_set():
            try:
                job_type, job_id = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            sem.acquire()
            future = self.pool.submit(self._tasks[job_type], job_id)

            def done(f: Future[None], job_id: int = job_id) -> None:
                sem.release()
                self._ran(job_id, f)

            future.add_done_callback(done)

    def produce(self, base_url: str) -> None:
        """Submit jobs now and then, half through the HTTP API, until stopped; when the
        queue runs low, a burst of jobs, so there is always a backlog to see."""
        while not self.stop_event.wait(random.uniform(0.02, 0.15)):
            if self.jobs.qsize() < self.workers:
                for _ in range(self.workers * 3):
                    self.submit(random.choice(JOB_TYPES))
            job_type = random.choice(JOB_TYPES)
            if random.random() < 0.5:
                self.submit(job_type)
                continue
            try:
                req = Request(f"{base_url}/jobs?type={job_type}", data=b"", method="POST")
                with urlopen(req, timeout=5) as resp:
                    resp.read()
                with urlopen(f"{base_url}/jobs/unknown-route", timeout=5):
                    pass
            except Exception:
                pass  # a 404 on purpose, or the server stopping

    def client(self, base_url: str) -> None:
        """A client that submits a job and waits for it (``wait=1``), again and again:
        a few of them keep requests in flight."""
        while not self.stop_event.is_set():
            job_type = random.choice(JOB_TYPES)
            try:
                req = Request(f"{base_url}/jobs?type={job_type}&wait=1", data=b"",
                              method="POST")
                with urlopen(req, timeout=60) as resp:
                    resp.read()
            except Exception:
                self.stop_event.wait(0.1)  # the server stopping

    # -- HTTP -------------------------------------------------------------------------

    def app(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI app: the job API and ``/metrics``."""
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == self.metrics.path:
            return self._metrics_app(environ, start_response)
        if (path == "/jobs" and method == "POST") or path == "/jobs/submit":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            job_type = query.get("type", ["scan"])[0]
            if job_type not in JOB_TYPES:
                return _json(start_response, "400 Bad Request",
                             {"error": f"type must be one of {', '.join(JOB_TYPES)}"})
            if query.get("wait", ["0"])[0] in ("1", "true"):
                job_id, status = self.submit_and_wait(job_type)
                return _json(start_response, "200 OK" if status != "queued" else "202 Accepted",
                             {"id": job_id, "type": job_type, "status": status})
            return _json(start_response, "202 Accepted",
                         {"id": self.submit(job_type), "type": job_type})
        if path == "/jobs":
            return _json(start_response, "200 OK", {"queued": self.jobs.qsize()})
        if path == "/":
            return _json(start_response, "200 OK", {"submit": "POST /jobs?type=scan",
                                                     "metrics": self.metrics.path})
        return _json(start_response, "404 Not Found", {"error": "not found"})

    @property
    def _metrics_app(self) -> Callable[..., Iterable[bytes]]:
        app = getattr(self, "_metrics_wsgi", None)
        if app is None:
            app = self._metrics_wsgi = self.metrics.make_wsgi_app()
        return app

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        """The app as served: wrapped in the HTTP middleware (``http_*`` families)."""
        return jobmetrics.WSGIMiddleware(self.app, metrics=self.metrics,
                                         operation=_operation)


def _operation(environ: Dict[str, Any]) -> Optional[str]:
    # Bounded labels: the demo's own routes, everything else "unknown".
    path = environ.get("PATH_INFO", "/")
    return path if path in ("/", "/jobs", "/jobs/submit", "/metrics") else None


def _json(start_response: StartResponse, status: str, body: Dict[str, Any]) -> List[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def run(port: int = 8001, addr: str = "127.0.0.1", duration: float = 0.0,
        workers: int = 4) -> None:
    """Serve the demo on ``addr:port`` (0: any free port) for ``duration`` seconds (0:
    until interrupted). A port that cannot be bound raises ``OSError`` naming it."""
    metrics = JobMetrics(node="demo")
    demo = Demo(metrics, workers=workers)
    try:
        server, _ = _serve(demo.wsgi_app(), port, addr, name="http")
    except OSError:
        demo.pool.shutdown(wait=False)
        raise
    host = addr if ":" not in addr else f"[{addr}]"
    base = f"http://{host}:{server.server_port}"
    threads = [
        threading.Thread(target=demo.dispatch, name="dispatch", daemon=True),
        threading.Thread(target=demo.produce, args=(base,), name="produce", daemon=True),
        *(threading.Thread(target=demo.client, args=(base,), name=f"client-{i}", daemon=True)
          for i in range(demo.clients)),
    ]
    for t in threads:
        t.start()
    print(f"jobmetrics demo: metrics at {base}{metrics.path}", flush=True)
    print(f"submit a job: curl -X POST '{base}/jobs?type=scan'", flush=True)
    try:
        if duration > 0:
            demo.stop_event.wait(duration)
        else:
            while not demo.stop_event.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop_event.set()
        server.shutdown()
        server.server_close()
        demo.pool.shutdown(wait=True, cancel_futures=True)
