"""What the multi-process server tests (gunicorn, uvicorn, Celery) share: reading a merged
scrape, waiting for workers, holding a request inside a worker to kill it there."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Tuple

from promcheck import promtool_check
from servers import get, scrape_until

P = "harbor_jobservice_"
Got = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]

# Geometric spacing (x1.2): each duration is told from its neighbours even with the
# sketch's 1% and a few milliseconds of server overhead on top of the sleep.
SLEEPS_MS = [round(40 * 1.2 ** k) for k in range(20)]


def requests(got: Got, op: str) -> float:
    """``http_request_total`` of ``GET op`` answered 200."""
    return got.get((P + "http_request_total",
                    (("code", "200"), ("method", "GET"), ("operation", op))), 0.0)


def durations(got: Got, op: str, suffix: str = "_count", quantile: str = "") -> float:
    """A sample of ``http_request_duration_seconds`` for ``GET op``."""
    labels: Tuple[Tuple[str, str], ...] = (("method", "GET"), ("operation", op))
    if quantile:
        labels = (*labels, ("quantile", quantile))
    return got.get((P + "http_request_duration_seconds" + suffix, labels), 0.0)


def workers(got: Got) -> str:
    """The ``workers`` label of the info family."""
    return next(dict(lb)["workers"] for name, lb in got if name == P + "info")


def assert_quantiles_of(estimate: Dict[str, float], seconds: List[float]) -> None:
    """Each estimated quantile is that of ``seconds`` within the sketch's 1% (plus a few ms
    a server adds to a measured sleep)."""
    done = sorted(seconds)
    for q, est in estimate.items():
        exact = done[math.floor(float(q) * (len(done) - 1))]
        assert exact * 0.99 <= est <= exact * 1.01 + 0.008, (q, est, exact)


def request_quantiles(got: Got, op: str) -> Dict[str, float]:
    return {q: durations(got, op, "", q) for q in ("0.5", "0.9", "0.99")}


def wait_workers(base: str, n: int) -> None:
    """Until ``n`` different workers have answered the app's uninstrumented ``/ready``
    (it sleeps 0.1 s and answers its pid, so concurrent calls reach every worker)."""
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(8) as pool:
        while len(set(pool.map(get, [base + "/ready"] * 8))) < n:
            assert time.monotonic() < deadline, f"the server never ran {n} workers"


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def held_request(url: str, marker: Path) -> Iterator[Tuple[int, List[BaseException]]]:
    """GET ``url`` from a thread; the app writes its worker's pid to ``marker`` and holds
    the request. Yields that pid and the errors the client saw, joined on exit."""
    errors: List[BaseException] = []

    def client() -> None:
        try:
            get(url, timeout=60)
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the held request never started"
            time.sleep(0.02)
        yield int(marker.read_text()), errors
    finally:
        thread.join(60)


def check_requests_spread_over_workers(base: str, op: str, n_workers: int) -> None:
    """``/work/<ms>`` for every sleep of SLEEPS_MS from eight clients: every worker takes
    some, and one scrape shows all of them, with the quantiles of all the durations (which
    no single worker saw)."""
    with ThreadPoolExecutor(8) as pool:
        pids = list(pool.map(get, [f"{base}/work/{ms}" for ms in SLEEPS_MS]))
    assert len(set(pids)) == n_workers
    n = len(SLEEPS_MS)
    text, got = scrape_until(base, lambda g: requests(g, op) >= n)
    assert requests(got, op) == n
    assert durations(got, op) == n
    assert durations(got, op, "_sum") >= sum(SLEEPS_MS) / 1000
    assert got[(P + "http_inflight_requests", ())] == 0.0
    assert_quantiles_of(request_quantiles(got, op), [ms / 1000 for ms in SLEEPS_MS])
    assert workers(got) == str(n_workers)
    assert "/work/40" not in text
    promtool_check(text)


def check_worker_killed_mid_request(base: str, hold: Path, op: str, n_workers: int,
                                    n: int, server: subprocess.Popen[bytes]) -> None:
    """``n`` requests, then one held in a worker inside ``m.track_task("replication")``
    (the app's ``/hold/<name>``) and that worker killed with SIGKILL: its counts stay, its
    in-flight request and running task are gone, the server's replacement serves the next
    ``n`` and the totals are exact."""
    with ThreadPoolExecutor(8) as pool:
        before = set(pool.map(get, [f"{base}/work/30"] * n))
    assert len(before) >= 2
    _, got = scrape_until(base, lambda g: requests(g, op) >= n)
    assert requests(got, op) == n

    running = (P + "running_task", (("type", "replication"),))
    inflight = (P + "http_inflight_requests", ())
    with held_request(f"{base}/hold/a", hold / "a") as (victim, errors):
        _, got = scrape_until(base, lambda g: g.get(running) == 1.0)
        assert got[running] == 1.0
        assert got[inflight] == 1.0
        os.kill(victim, signal.SIGKILL)
    assert errors, "the held request should fail with its worker"

    # The next scrape no longer counts the dead worker's in-flight request or task.
    _, got = scrape_until(base, lambda g: g.get(running) == 0.0 and g.get(inflight) == 0.0)
    assert got[running] == 0.0
    assert got[inflight] == 0.0
    assert requests(got, op) == n
    assert durations(got, op) == n
    wait_workers(base, n_workers)  # the server has started a replacement
    with ThreadPoolExecutor(8) as pool:
        after = set(pool.map(get, [f"{base}/work/30"] * n))
    assert str(victim) not in after
    text, got = scrape_until(base, lambda g: requests(g, op) >= 2 * n)
    assert requests(got, op) == 2 * n
    assert durations(got, op) == 2 * n
    assert server.poll() is None
    promtool_check(text)
