"""One state layer: the same work gives the same scrape in-process and in multi-process
mode, and merging several processes' cells is the scrape of one process doing it all.

Time is a fake clock here (every reading advances it by a quarter second), so durations,
windows and quantiles are the same in both runs, to the last bit.
"""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path
from typing import Callable, List

import pytest
from prometheus_client import CollectorRegistry

import jobmetrics.queue_proxy
import jobmetrics.service
import jobmetrics.state
from jobmetrics import JobMetrics, Stopped, WSGIMiddleware
from jobmetrics.collect import fold, merge, render
from promcheck import promtool_check, samples, scrape

P = "harbor_jobservice_"


class FakeClock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    for mod in (jobmetrics.state, jobmetrics.service, jobmetrics.queue_proxy):
        monkeypatch.setattr(mod, "perf_counter", c)
    return c


def scenario(m: JobMetrics) -> object:
    """Tasks of several types and statuses, HTTP requests, queue traffic, a worker pool."""

    @m.task("replication")
    def replicate(i: int) -> int:
        if i % 4 == 1:
            raise RuntimeError("boom")
        if i % 4 == 2:
            raise Stopped()
        return i

    for i in range(12):
        try:
            replicate(i)
        except (RuntimeError, Stopped):
            pass
    with m.track_task("gc"):
        pass

    def app(environ: dict, start_response: Callable[..., object]) -> List[bytes]:  # type: ignore[type-arg]
        start_response("404 Not Found" if environ["PATH_INFO"] == "/nope" else "200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, metrics=m,
                        operation=lambda e: None if e["PATH_INFO"] == "/nope" else "/jobs")
    for path in ("/jobs", "/jobs", "/nope"):
        body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda *a: None)
        list(body)
        body.close()  # type: ignore[attr-defined]

    q = m.instrument_queue(queue.Queue(), name="jobs", type_of=lambda job: job["type"])
    for kind in ("scan", "scan", "gc"):
        q.put({"type": kind})
    q.get()

    async def pool_run() -> None:
        aq = m.instrument_queue(asyncio.Queue(), name="async", type_of=lambda j: j)

        async def handle(job: str) -> None:
            if job == "bad":
                raise ValueError(job)

        pool = m.worker_pool(aq, handle, workers=2, on_error=lambda item, exc: None)
        async with pool:
            for job in ("ok", "bad", "ok"):
                await aq.put(job)
            await aq.join()

    asyncio.run(pool_run())
    return q  # alive until the scrape: a queue gone leaves it


def test_in_process_and_multi_process_scrapes_are_identical(
        tmp_path: Path, clock: FakeClock) -> None:
    single = JobMetrics(registry=CollectorRegistry(), process_collectors=False,
                        multiprocess_dir="", node="n1")
    kept = scenario(single)
    one = scrape(single.registry)
    clock.now = 10_000.0
    multi = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                       node="n1")
    kept = scenario(multi)
    two = scrape(multi.registry)
    del kept
    assert one == two
    got = samples(one)
    assert got[(P + "task_total", (("status", "success"), ("type", "replication")))] == 6.0
    assert got[(P + "task_total", (("status", "fail"), ("type", "bad")))] == 1.0
    assert got[(P + "task_total", (("status", "success"), ("type", "ok")))] == 2.0
    assert got[(P + "pending_task", (("type", "scan"),))] == 1.0
    assert got[(P + "queue_size", (("queue", "jobs"),))] == 2.0
    assert got[(P + "http_request_total",
                (("code", "404"), ("method", "GET"), ("operation", "unknown")))] == 1.0
    assert got[(P + "info", (("node", "n1"), ("pool", ""), ("workers", "1")))] == 1.0
    promtool_check(one)


def _service(m: JobMetrics) -> jobmetrics.service.Service:
    service = m._service
    assert service is not None
    return service


def test_merging_processes_is_one_process_doing_it_all(clock: FakeClock) -> None:
    """Three simulated processes (three in-memory stores) merged, against one store that
    did all their work; then one of them dies: counts stay, its gauges go."""
    work = [
        [("a", "ok"), ("a", "fail"), ("b", "ok")],
        [("a", "ok"), ("b", "stop")],
        [("b", "ok"), ("b", "ok"), ("a", "fail")],
    ]

    def run(m: JobMetrics, items: list) -> None:  # type: ignore[type-arg]
        for t, outcome in items:
            try:
                with m.track_task(t) as h:
                    if outcome == "fail":
                        raise RuntimeError
                    if outcome == "stop":
                        h.mark_stopped()
            except RuntimeError:
                pass
        m.task_series("a").add_pending(1)  # type: ignore[union-attr]

    procs = [JobMetrics(registry=CollectorRegistry(), process_collectors=False, node="n1")
             for _ in work]
    start = clock.now
    for m, items in zip(procs, work):
        run(m, items)
    all_in_one = JobMetrics(registry=CollectorRegistry(), process_collectors=False,
                            node="n1")
    clock.now = start
    for items in work:
        run(all_in_one, items)
    one = _service(all_in_one)
    now = clock.now
    s = one.settings
    table = one.table
    fams = {table.names[k] for k in table.names}
    windows = {table.names[k]: table.window(k) for k in ("process_time", "success_rate")}

    def scrape_of(snaps: list) -> str:  # type: ignore[type-arg]
        merged = merge(snaps, fams, windows, s.age_buckets, now)
        reg = CollectorRegistry()

        class C:
            def collect(self):  # type: ignore[no-untyped-def]
                return render(merged, table, one.info, sum(x.live for x in snaps))

        reg.register(C())  # type: ignore[arg-type]
        return scrape(reg)

    snaps = [snap for m in procs for snap in _service(m).store.snapshots()]
    single = scrape_of(one.store.snapshots())
    merged_text = scrape_of(snaps)
    # Durations differ (each process read its own clock), counts, gauges, rates do not.
    a, b = samples(single), samples(merged_text)
    for key in a:
        if "process_time" not in key[0] and "info" not in key[0]:
            assert a[key] == b[key], key
    assert b[(P + "task_total", (("status", "fail"), ("type", "a")))] == 2.0
    assert b[(P + "pending_task", (("type", "a"),))] == 3.0
    assert b[(P + "task_success_rate", (("type", "b"),))] == 1.0
    assert b[(P + "info", (("node", "n1"), ("pool", ""), ("workers", "3")))] == 1.0

    # Process 0 dies: folded into an archive, its counts stay and its pending goes.
    archive: dict = {}  # type: ignore[type-arg]
    fold(archive, list(snaps[0].items))
    from jobmetrics.cells import Snapshot

    after = [Snapshot(False, list(archive.items())), *snaps[1:]]
    c = samples(scrape_of(after))
    assert c[(P + "task_total", (("status", "fail"), ("type", "a")))] == 2.0
    assert c[(P + "pending_task", (("type", "a"),))] == 2.0
    assert c[(P + "task_success_rate", (("type", "a"),))] == b[
        (P + "task_success_rate", (("type", "a"),))]
