"""``jobmetrics.forking``: a JobMetrics made in memory moves into a directory chosen later,
with its values, its decorated functions, and what processes forked afterwards record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics
from jobmetrics.forking import ensure_directory, record_into, worker_directory
from promcheck import promtool_check, scrape, value

P = "harbor_jobservice_"


def test_record_into_keeps_values_and_decorators_and_counts_forked_children(
        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    m = JobMetrics(registry=registry)
    other = JobMetrics(registry=registry)  # shares m's families

    @m.task("gc")
    def gc(fail: bool = False) -> None:
        if fail:
            raise RuntimeError("x")

    gc()
    with pytest.raises(RuntimeError):
        gc(fail=True)
    assert record_into(m, str(tmp_path)) is True
    assert record_into(m, str(tmp_path)) is False  # already there
    # Its file, and the series budget's list with the type admitted before ("gc").
    assert sorted(os.listdir(tmp_path)) == [f"jobmetrics-{os.getpid()}.db",
                                            "jobmetrics-budgets.keys"]
    gc()
    with other.track_task("gc"):
        pass
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                gc()
                gc()
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    text = scrape(registry)
    assert value(registry, P + "task_total", type="gc", status="success") == 1 + 1 + 1 + 4
    assert value(registry, P + "task_total", type="gc", status="fail") == 1
    assert value(registry, P + "running_task", type="gc") == 0
    promtool_check(text)


def test_disabled_and_bad_directory(tmp_path: Path) -> None:
    off = JobMetrics(registry=CollectorRegistry(), enabled=False)
    assert record_into(off, str(tmp_path)) is False
    assert ensure_directory(off) is None
    m = JobMetrics(registry=CollectorRegistry())
    with pytest.raises(ValueError, match="is not a directory"):
        record_into(m, str(tmp_path / "missing"))
    in_dir = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path))
    assert ensure_directory(in_dir) is None  # records into a directory already
    with pytest.raises(ValueError, match="already records there"):
        record_into(m, str(tmp_path))


def test_worker_directory_is_fresh_and_removed_by_its_process_only() -> None:
    a, b = worker_directory(), worker_directory()
    assert a != b
    assert os.path.basename(a).startswith("jobmetrics-")
    assert os.listdir(a) == []
    pid = os.fork()
    if pid == 0:  # a forked child's exit handlers must not remove it
        import atexit

        atexit._run_exitfuncs()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.isdir(a) and os.path.isdir(b)


def test_one_process_serves_and_another_takes_over_when_it_dies(tmp_path: Path) -> None:
    import multiprocessing
    import signal
    import threading

    from jobmetrics.forking import serve_when_locked, start_directory

    path, made = start_directory("test", os.getpid())
    try:
        assert made and os.stat(path).st_mode & 0o777 == 0o700
        assert start_directory("test", os.getpid()) == (path, False)  # found, not made
        ctx = multiprocessing.get_context("fork")
        holding = ctx.Event()

        def holder() -> None:
            serve_when_locked(path, lambda: holding.set() or True, "test")
            holding.wait(10)
            signal.pause()

        p = ctx.Process(target=holder)
        p.start()
        assert holding.wait(10)
        served = threading.Event()
        serve_when_locked(path, lambda: served.set() or True, "test")
        assert not served.wait(0.3)  # the holder serves; this one waits
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join(10)
        assert served.wait(10)  # took over
    finally:
        import shutil

        shutil.rmtree(path)
    import tempfile

    # A link planted where a start's directory will be is never used.
    planted = Path(tempfile.gettempdir()) / f"jobmetrics-test-{os.getuid()}-{1 << 30}-"
    planted.unlink(missing_ok=True)
    planted.symlink_to(tmp_path)
    try:
        with pytest.raises(ValueError, match="not a directory of this user's"):
            start_directory("test", 1 << 30)  # no such pid: no start time, name ends "-"
    finally:
        planted.unlink()
