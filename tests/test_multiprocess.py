"""Multi-process mode with real processes: fork pools, SIGKILL, churn, torn files."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics, Stopped
from promcheck import promtool_check, samples, scrape

P = "harbor_jobservice_"
CTX = multiprocessing.get_context("fork")

# Set by each test before it forks; the children inherit them.
M: JobMetrics | None = None
SLEEPS = [0.01 * (1 + i % 10) for i in range(40)]


def _job(i: int) -> int:
    time.sleep(SLEEPS[i])
    if i % 10 == 3:
        raise RuntimeError("fail")
    if i % 10 == 7:
        raise Stopped()
    return i


def run_job(i: int) -> str:
    assert M is not None
    try:
        M.task("replication")(_job)(i)
        return "success"
    except RuntimeError:
        return "fail"
    except Stopped:
        return "stop"


@pytest.fixture
def mp(tmp_path: Path) -> JobMetrics:
    global M
    M = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    return M


def got(m: JobMetrics) -> dict:  # type: ignore[type-arg]
    return samples(scrape(m.registry))


def t(task_type: str, status: str) -> tuple:  # type: ignore[type-arg]
    return (P + "task_total", (("status", status), ("type", task_type)))


def test_pool_of_4_matches_one_process(mp: JobMetrics) -> None:
    run_job(0)  # the parent works before forking: the children must not count it again
    with CTX.Pool(4) as pool:
        outcomes = pool.map(run_job, range(40), chunksize=1)
        pids = set(pool.map(_pid, range(8)))
    assert len(pids) >= 2
    g = got(mp)
    assert g[t("replication", "success")] == 1 + outcomes.count("success") == 33.0
    assert g[t("replication", "fail")] == 4.0
    assert g[t("replication", "stop")] == 4.0
    assert g[(P + "task_success_rate", (("type", "replication"),))] == pytest.approx(33 / 37)
    assert g[(P + "running_task", (("type", "replication"),))] == 0.0
    # Quantiles of the merged sketches: those of one process doing all the work,
    # within the sketch's 1% plus the timer's slack over each sleep.
    done = sorted([SLEEPS[0]] + [SLEEPS[i] for i in range(40) if i % 10 not in (3, 7)])
    for q in (0.5, 0.9, 0.99):
        exact = done[math.floor(q * (len(done) - 1))]
        est = g[(P + "task_process_time_seconds",
                 (("quantile", str(q)), ("status", "success"), ("type", "replication")))]
        assert exact * 0.99 <= est <= exact * 1.01 + 0.008, (q, est, exact)
    count = g[(P + "task_process_time_seconds_count",
               (("status", "success"), ("type", "replication")))]
    assert count == 33.0
    promtool_check(scrape(mp.registry))


def _pid(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def _hang(m: JobMetrics, started) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        with m.track_task("gc"):
            pass
    with m.track_task("gc"):
        started.set()
        time.sleep(600)


def test_sigkill_keeps_counts_and_drops_live_gauges(mp: JobMetrics) -> None:
    started = CTX.Event()
    proc = CTX.Process(target=_hang, args=(mp, started))
    proc.start()
    assert started.wait(20)
    g = got(mp)
    assert g[(P + "running_task", (("type", "gc"),))] == 1.0
    assert g[t("gc", "success")] == 3.0
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    proc.join(10)
    g = got(mp)
    assert g[(P + "running_task", (("type", "gc"),))] == 0.0
    assert g[t("gc", "success")] == 3.0
    # The dead process's file was folded into the archive.
    names = {p.name for p in Path(mp.settings.multiprocess_dir).glob("jobmetrics-*.db")}
    assert names == {"jobmetrics-archive.db", f"jobmetrics-{os.getpid()}.db"}


def _one_task(m: JobMetrics, i: int) -> None:
    with m.track_task("churn"):
        if i % 2:
            raise SystemExit(0)  # a stop: SystemExit is not an Exception


def test_200_process_restarts_leave_one_archive(mp: JobMetrics) -> None:
    for i in range(200):
        p = CTX.Process(target=_one_task, args=(mp, i))
        p.start()
        p.join(20)
        if i % 50 == 49:
            got(mp)  # scrapes in between fold the dead files as they go
    g = got(mp)
    assert g[t("churn", "success")] == 100.0
    assert g[t("churn", "stop")] == 100.0
    files = list(Path(mp.settings.multiprocess_dir).glob("jobmetrics-*.db"))
    assert len(files) == 2  # this process's and the archive: the scrape reads two files


def test_torn_and_foreign_files_never_break_a_scrape(mp: JobMetrics) -> None:
    with mp.track_task("t"):
        pass
    d = Path(mp.settings.multiprocess_dir)
    own = d / f"jobmetrics-{os.getpid()}.db"
    (d / "jobmetrics-999999991.db").write_bytes(b"")
    (d / "jobmetrics-999999992.db").write_bytes(b"not ours at all")
    (d / "jobmetrics-999999993.db").write_bytes(own.read_bytes()[:200])  # cut mid-entry
    g = got(mp)
    assert g[t("t", "success")] >= 1.0
    assert g[(P + "running_task", (("type", "t"),))] == 0.0
    promtool_check(scrape(mp.registry))


def test_queue_size_published_by_the_owning_process(mp: JobMetrics) -> None:
    import queue

    ready = CTX.Event()
    stop = CTX.Event()

    def owner() -> None:
        q: queue.Queue[int] = queue.Queue()
        for i in range(5):
            q.put(i)
        sizes = mp.queue_sizes
        assert sizes is not None
        sizes.register("jobs", q, lambda q: q.qsize())
        ready.set()
        stop.wait(30)

    proc = CTX.Process(target=owner)
    proc.start()
    try:
        assert ready.wait(20)
        assert got(mp)[(P + "queue_size", (("queue", "jobs"),))] == 5.0
    finally:
        stop.set()
        proc.join(10)
    assert (P + "queue_size", (("queue", "jobs"),)) not in got(mp)


def test_bad_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiprocess_dir"):
        JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path / "missing"))


def test_environment_variable_switches_it_on(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    m = JobMetrics(registry=CollectorRegistry())
    assert m.settings.multiprocess_dir == str(tmp_path)
    off = JobMetrics("other", registry=CollectorRegistry(), multiprocess_dir="")
    assert off.settings.multiprocess_dir == ""


def test_mark_process_dead_folds_a_file_now(mp: JobMetrics) -> None:
    from jobmetrics.multiprocess import child_exit

    done = CTX.Event()
    hold = CTX.Event()

    def worker() -> None:
        with mp.track_task("w"):
            pass
        done.set()
        hold.wait(30)

    p = CTX.Process(target=worker)
    p.start()
    assert done.wait(20)
    d = Path(mp.settings.multiprocess_dir)
    assert (d / f"jobmetrics-{p.pid}.db").exists()

    class Worker:
        pid = p.pid

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    try:
        child_exit(None, Worker())  # as gunicorn calls it
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert not (d / f"jobmetrics-{p.pid}.db").exists()
    hold.set()
    p.join(10)
    assert got(mp)[t("w", "success")] == 1.0


def test_fork_after_the_directory_is_gone_records_nothing_and_never_raises(
    tmp_path: Path,
) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(d))
    for f in d.iterdir():
        f.unlink()
    d.rmdir()

    def child() -> None:
        with m.track_task("x"):
            pass

    p = CTX.Process(target=child)
    p.start()
    p.join(20)
    assert p.exitcode == 0


def test_children_forked_during_scrapes_never_inherit_the_lock(mp: JobMetrics) -> None:
    """Celery forks pool children while its main process serves scrapes. A child forked
    mid-scrape must not keep the scrape's lock: it would block every later scrape and
    deadlock its own exit hook (mark_process_dead, as setup_celery runs it)."""
    import threading

    from jobmetrics.multiprocess import mark_process_dead

    stop = threading.Event()

    def scrape_forever() -> None:
        while not stop.is_set():
            scrape(mp.registry)

    scraper = threading.Thread(target=scrape_forever)
    scraper.start()
    pids = []
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:  # a pool child: one task, then its exit hook
                code = 1
                try:
                    with mp.track_task("w"):
                        pass
                    mark_process_dead(os.getpid(), mp.settings.multiprocess_dir)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
            time.sleep(0.005)
        deadline = time.monotonic() + 20
        codes = {}
        while len(codes) < len(pids) and time.monotonic() < deadline:
            for pid in set(pids) - set(codes):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
    finally:
        stop.set()
        scraper.join(20)
        for pid in set(pids) - set(codes):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert not scraper.is_alive(), "a scrape hung on a lock held by a child"
    assert sorted(codes.values()) == [0] * 20, "children hung in their exit hook"
    assert got(mp)[t("w", "success")] == 20.0
