"""Failures found under attack (issue 18): finalizers recording inside a recording, forks
while other threads record, poisoned label values, bad observations, two instances on
one directory, hostile files in the directory, a wall clock that steps back."""

from __future__ import annotations

import decimal
import gc
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics, QuantileSummary
from promcheck import promtool_check, samples, scrape, value

P = "harbor_jobservice_"


@pytest.fixture(params=["in-process", "multi-process"])
def mode_metrics(request: pytest.FixtureRequest, tmp_path: Path) -> JobMetrics:
    directory = str(tmp_path) if request.param == "multi-process" else ""
    return JobMetrics(registry=CollectorRegistry(), process_collectors=False,
                      multiprocess_dir=directory)


def test_a_finalizer_recording_inside_a_recording_never_deadlocks(
        mode_metrics: JobMetrics) -> None:
    """Abandoned @m.task generators in reference cycles are closed by the garbage
    collector, which runs wherever an allocation happens, also inside a recording of the
    same thread. Sweeping the GC threshold puts that point everywhere."""
    m = mode_metrics

    @m.task("gen")
    def gen() -> Iterator[int]:
        yield 1
        yield 2

    @m.task("plain")
    def plain() -> None:
        pass

    rounds = 0

    def work() -> None:
        nonlocal rounds
        old = gc.get_threshold()
        try:
            for threshold in range(1, 25):
                gc.set_threshold(threshold)
                for _ in range(100):
                    g = gen()
                    next(g)
                    cycle: list = [g]  # type: ignore[type-arg]
                    cycle.append(cycle)
                    del g, cycle
                    plain()
                    rounds += 1
        finally:
            gc.set_threshold(*old)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "recording deadlocked"
    gc.collect()
    assert value(m.registry, P + "task_total", type="plain", status="success") == rounds
    assert value(m.registry, P + "task_total", type="gen", status="stop") == rounds
    assert value(m.registry, P + "running_task", type="gen") == 0.0


def test_fork_while_other_threads_record_leaves_the_child_working() -> None:
    m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)

    @m.task("t")
    def t() -> None:
        pass

    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            t()

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for _ in range(30):
            pid = os.fork()
            if pid == 0:  # the child records, scrapes and leaves at once
                try:
                    t()
                    scrape(m.registry)
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail("the forked child deadlocked on a lock held at the fork")
                time.sleep(0.005)
    finally:
        stop.set()
        for th in threads:
            th.join()


def test_a_lone_surrogate_never_breaks_a_scrape(mode_metrics: JobMetrics) -> None:
    import queue

    m = mode_metrics
    with m.track_task("job-\udcff"):
        pass
    q = m.instrument_queue(queue.Queue(), name="q\ud800", type_of=lambda item: item)
    q.put("scan\udcfe")
    q.put(7)  # not a str: counted as "unknown"
    text = scrape(m.registry)
    got = samples(text)
    assert got[(P + "task_total", (("status", "success"), ("type", "job-\ufffd")))] == 1.0
    assert got[(P + "pending_task", (("type", "scan\ufffd"),))] == 1.0
    assert got[(P + "pending_task", (("type", "unknown"),))] == 1.0
    assert got[(P + "queue_size", (("queue", "q\ufffd"),))] == 2.0
    promtool_check(text)
    del q


def test_bad_observations_are_rejected_at_observe(registry: CollectorRegistry) -> None:
    s = QuantileSummary("latency_seconds", "d", registry=registry)
    for bad in ("1", None, complex(1, 2), decimal.Decimal("1.5"), [1.0]):
        with pytest.raises(TypeError, match="real number"):
            s.observe(bad)  # type: ignore[arg-type]
    s.observe(True)
    s.observe(2)
    s.observe(0.5)
    got = samples(scrape(registry))
    assert got[("latency_seconds_count", ())] == 3.0
    assert got[("latency_seconds_sum", ())] == 3.5
    np = pytest.importorskip("numpy")
    s.observe(np.float64(1.0))
    s.observe(np.int64(1))
    assert samples(scrape(registry))[("latency_seconds_count", ())] == 5.0


def test_a_constant_stream_reports_the_constant(registry: CollectorRegistry) -> None:
    s = QuantileSummary("latency_seconds", "d", registry=registry)
    for _ in range(100):
        s.observe(1.0)
    got = samples(scrape(registry))
    for q in ("0.5", "0.9", "0.99"):
        assert got[("latency_seconds", (("quantile", q),))] == 1.0  # the sketch says 1.01


def test_two_instances_in_one_process_on_one_directory(tmp_path: Path) -> None:
    d = str(tmp_path)
    app = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
    default = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)  # a second one
    other = JobMetrics("acme", "worker", registry=CollectorRegistry(), multiprocess_dir=d)
    for _ in range(5):
        with app.track_task("gc"):
            pass
    for _ in range(100):
        with default.track_task("gc"):
            pass
    for _ in range(5):
        with app.track_task("gc"):
            pass
    with other.track_task("gc"):
        pass
    assert len(list(tmp_path.glob("jobmetrics-*.db"))) == 1  # one process, one file
    for m in (app, default):
        assert value(m.registry, P + "task_total", type="gc", status="success") == 110.0
    # Another prefix in the same directory reports its own tasks only.
    assert value(other.registry, "acme_worker_task_total", type="gc", status="success") == 1.0
    assert value(other.registry, P + "task_total", type="gc", status="success") is None


def test_hostile_files_in_the_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    import jobmetrics._errors

    jobmetrics._errors._reported.clear()
    d = tmp_path
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(d))
    with m.track_task("gc"):
        pass
    os.mkfifo(d / "jobmetrics-999999991.db")  # a FIFO under a value file's name
    bad = d / "jobmetrics-999999992.db"  # a dead process's file with a key that is junk
    bad.write_bytes(b"JMv2" + (24).to_bytes(4, "little") + (4).to_bytes(4, "little")
                    + b"{x}!" + b"\0" * 8)
    victim = d.parent / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, d / f"jobmetrics-archive.db.{os.getpid()}.tmp")
    with caplog.at_level(logging.ERROR, logger="jobmetrics"):
        got = samples(scrape(m.registry))  # returns: no hang, no exception
    assert got[(P + "task_total", (("status", "success"), ("type", "gc")))] == 1.0
    assert victim.read_text() == "keep me"
    assert bad.exists()  # what could not be read is never deleted
    assert any("999999992" in r.getMessage() or "999999992" in str(r.exc_info)
               for r in caplog.records)


def test_a_relative_directory_survives_a_chdir(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mp").mkdir()
    monkeypatch.chdir(tmp_path)
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir="mp")
    monkeypatch.chdir("/")
    with m.track_task("gc"):
        pass
    assert value(m.registry, P + "task_total", type="gc", status="success") == 1.0


def test_a_wall_clock_step_back_keeps_quantiles_and_rate(
        mode_metrics: JobMetrics, monkeypatch: pytest.MonkeyPatch) -> None:
    m = mode_metrics
    with m.track_task("gc"):
        pass
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600.0)  # NTP, a VM resumed
    with m.track_task("gc"):
        pass
    q = value(m.registry, P + "task_process_time_seconds", type="gc", status="success",
              quantile="0.5")
    assert q is not None and not math.isnan(q)
    assert value(m.registry, P + "task_success_rate", type="gc") == 1.0


def test_task_types_and_queue_names_have_a_series_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    import queue

    m = JobMetrics(registry=CollectorRegistry(), process_collectors=False, max_series=3)
    with caplog.at_level(logging.WARNING, logger="jobmetrics"):
        for i in range(50):  # task types from user data
            with m.track_task(f"type-{i}"):
                pass
        queues = [m.instrument_queue(queue.Queue(), name=f"q{i}") for i in range(5)]
    got = samples(scrape(m.registry))
    types = {dict(labels)["type"] for name, labels in got if name == P + "task_total"}
    assert types == {"type-0", "type-1", "type-2", "overflow"}
    assert got[(P + "task_total", (("status", "success"), ("type", "overflow")))] == 47.0
    names = {dict(labels)["queue"] for name, labels in got if name == P + "queue_size"}
    assert names == {"q0", "q1", "q2", "overflow"}
    assert len([r for r in caplog.records if "overflow" in r.getMessage()]) == 2
    with pytest.raises(ValueError, match="max_series"):
        JobMetrics(registry=CollectorRegistry(), max_series=0)
    del queues


FORK_IN_SIGNAL = r"""
import os, signal, sys
from prometheus_client import CollectorRegistry, generate_latest
from jobmetrics import JobMetrics

m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=sys.argv[1])
forks = 0

def handler(signum, frame):
    global forks
    pid = os.fork()  # from a signal handler, wherever the main thread is
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    forks += 1
    signal.setitimer(signal.ITIMER_REAL, 0.001)  # one at a time: handlers never nest

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001)
while forks < 200:
    with m.track_task("t"):
        pass
    generate_latest(m.registry)  # takes the directory lock and its fork guard
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print("ok", forks)
"""


def test_forking_from_a_signal_handler_never_deadlocks(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FORK_IN_SIGNAL, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


FULL_DISK = r"""
import logging, sys
from prometheus_client import CollectorRegistry, generate_latest
from jobmetrics import JobMetrics

logging.basicConfig(level=logging.ERROR)
m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=sys.argv[1])
for i in range(2000):  # far more cells than the filesystem holds
    with m.track_task(f"type-{i}"):
        pass
generate_latest(m.registry)
print("ok")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_filesystem_never_crashes_the_host(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(mnt)],
                              capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    # A store into a sparse mapping on a full filesystem is a SIGBUS (returncode -7).
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "ok"
    assert "No space left on device" in proc.stderr  # said once, then memory
    import re

    assert len(re.findall(r"jobmetrics: multiprocess file in \S+ failed;", proc.stderr)) == 1
    # The shared series budget's file, if it was hit too, is said once as well.
    assert len(re.findall(r"jobmetrics: series budget in \S+ failed;", proc.stderr)) <= 1


def test_series_budgets_hold_for_the_merged_output_of_recycled_processes(
        tmp_path: Path) -> None:
    """Multi-process mode: five worker processes, one after another (recycled), each
    meeting four HTTP operations and four task types, against budgets of three: the
    merged output keeps three of each, not three per process."""
    import multiprocessing
    from typing import Any, List

    from jobmetrics import WSGIMiddleware

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False, max_series=3)

    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def worker(i: int) -> None:
        wrapped = WSGIMiddleware(app, metrics=m, operation=lambda e: e["PATH_INFO"],
                                 max_series=3)
        for j in range(i, i + 4):
            env = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/p{j}", "wsgi.input": None}
            wrapped(env, lambda *a: None).close()  # type: ignore[attr-defined]
            with m.track_task(f"t{j}"):
                pass
        os._exit(0)

    ctx = multiprocessing.get_context("fork")
    for i in range(5):
        p = ctx.Process(target=worker, args=(i,))
        p.start()
        p.join()
        assert p.exitcode == 0
    got = samples(scrape(m.registry))
    requests = {dict(labels)["operation"]: v for (name, labels), v in got.items()
                if name == P + "http_request_total"}
    # /p0 is met by the first process, /p1 by two, /p2 by three; 20 - 6 overflow.
    assert requests == {"/p0": 1.0, "/p1": 2.0, "/p2": 3.0, "overflow": 14.0}
    types = {dict(labels)["type"]: v for (name, labels), v in got.items()
             if name == P + "task_total" and dict(labels)["status"] == "success"}
    assert types == {"t0": 1.0, "t1": 2.0, "t2": 3.0, "overflow": 14.0}
    promtool_check(scrape(m.registry))


def test_a_hostile_series_budget_file_costs_its_bad_lines_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, link = tmp_path / "good", tmp_path / "link"
    good.mkdir()
    link.mkdir()
    family = P + "running_task"
    # One line another process admitted, junk, and a line cut short by a crash.
    (good / "jobmetrics-budgets.keys").write_bytes(
        f'["{family}","other"]\n'.encode() + b'not json\n[1,2]\n["' + family.encode()
        + b'","cut')
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(good),
                   process_collectors=False, max_series=2)
    for t in ("a", "b", "other"):
        with m.track_task(t):
            pass
    got = samples(scrape(m.registry))
    types = {dict(labels)["type"] for (name, labels) in got if name == P + "task_total"}
    assert types == {"a", "other", "overflow"}  # "other" was admitted by another process
    lines = (good / "jobmetrics-budgets.keys").read_bytes().split(b"\n")
    assert lines[-2:] == [f'["{family}","a"]'.encode(), b""]  # after the cut line, whole

    target = tmp_path / "not-ours"
    target.write_bytes(b"keep")
    (link / "jobmetrics-budgets.keys").symlink_to(target)
    mp = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(link),
                    process_collectors=False, max_series=2)
    with caplog.at_level(logging.ERROR, logger="jobmetrics"):
        for t in ("a", "b", "c"):
            with mp.track_task(t):
                pass
    assert target.read_bytes() == b"keep"  # never followed
    types = {dict(labels)["type"] for (name, labels) in samples(scrape(mp.registry))
             if name == P + "task_total"}
    assert types == {"a", "b", "overflow"}  # counted by this process alone, as said once
    assert len([r for r in caplog.records if "series budget" in r.getMessage()]) == 1


def test_a_killed_workers_gauges_die_with_it_even_when_its_pid_lives_again(
        tmp_path: Path) -> None:
    """A worker is SIGKILLed mid-task; the kernel gives its pid to a new process. Its
    file must read as dead (its counts kept, its running task gone), not as that new
    process's. The reuse is made by naming the dead file for a live process's pid."""
    import multiprocessing
    import signal
    import subprocess

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    started = multiprocessing.get_context("fork").Event()

    def worker() -> None:
        with m.track_task("gc"):
            pass
        with m.track_task("gc"):
            started.set()
            time.sleep(60)

    p = multiprocessing.get_context("fork").Process(target=worker)
    p.start()
    assert started.wait(20)
    os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    p.join(10)
    newcomer = subprocess.Popen(["sleep", "60"])  # a live process that is not the writer
    try:
        os.rename(tmp_path / f"jobmetrics-{p.pid}.db", tmp_path / f"jobmetrics-{newcomer.pid}.db")
        got = samples(scrape(m.registry))
        assert got[(P + "running_task", (("type", "gc"),))] == 0.0
        assert got[(P + "task_total", (("status", "success"), ("type", "gc")))] == 1.0
        assert not (tmp_path / f"jobmetrics-{newcomer.pid}.db").exists()  # folded
    finally:
        newcomer.kill()
        newcomer.wait()
