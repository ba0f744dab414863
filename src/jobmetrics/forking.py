"""A directory of its own for a worker that forks, made when the worker starts.

Job frameworks fork: Celery's prefork pool, RQ's work horse per job, Dramatiq's worker
processes. A child's counts live in its memory and die with it unless every process
records into a multi-process directory (:mod:`jobmetrics.multiprocess`). The framework
integrations make that directory themselves, with no setup by the user:

- :func:`worker_directory` makes a fresh ``jobmetrics-*`` temporary directory for one start
  of a worker (so restarts never mix) and removes it when the process that made it exits;
- :func:`record_into` moves an existing :class:`~jobmetrics.JobMetrics` into a directory
  chosen after it was created: its values so far, its series, every decorator and wrapper
  already holding its state, and every other ``JobMetrics`` sharing its families on the
  same registry and prefix. Processes forked afterwards record into files of their own
  there, and any process of the worker answers for all of them.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import stat
import tempfile
import threading
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from . import _errors

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["ensure_directory", "fold_own_file", "needs_directory", "record_into",
           "serve_when_locked", "start_directory", "start_time", "worker_directory"]

_SERVE_LOCK = "jobmetrics-serve.lock"

def worker_directory() -> str:
    """A new empty directory for one worker start, removed (with its files) when this
    process exits; processes it forks never remove it."""
    path = tempfile.mkdtemp(prefix="jobmetrics-")
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def record_into(metrics: JobMetrics, directory: str) -> bool:
    """Make ``metrics`` record into the multi-process ``directory`` from now on
    (:meth:`jobmetrics.JobMetrics.record_into`)."""
    return metrics.record_into(directory)


def fold_own_file(directory: Optional[str], where: str) -> None:
    """A process of a worker exiting on its own: fold its file into the directory's
    archive now, so the next scrape need not (never raises; logged once)."""
    if directory is None:
        return
    try:
        from .multiprocess import mark_process_dead

        mark_process_dead(os.getpid(), directory)
    except Exception as exc:
        _errors.report(where, exc)


def needs_directory(metrics: JobMetrics) -> bool:
    """``metrics`` records into this process's memory (no directory, not disabled)."""
    return metrics.enabled and metrics.directory is None


def ensure_directory(metrics: JobMetrics) -> Optional[str]:
    """For a worker about to fork: if ``metrics`` records into memory, give it a fresh
    :func:`worker_directory`; return that directory, else ``None``."""
    if not needs_directory(metrics):
        return None
    path = worker_directory()
    record_into(metrics, path)
    return path



# ---------------------------------------------------------------------------------
# Workers whose processes are not forked from an instrumented parent (Dramatiq's and
# Taskiq's command lines start them before the application is imported): each process
# finds the directory of its worker's start by name, and one of them serves.


def start_time(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc``), or
    ``""`` where it cannot be read."""
    from .multiprocess.directory import process_start

    start = process_start(pid)
    return str(start) if start else ""


def start_directory(framework: str, main_pid: int) -> Tuple[str, bool]:
    """The directory of one start of a worker whose main process is ``main_pid``, and
    whether this call made it: ``jobmetrics-<framework>-<uid>-<pid>-<start time>`` in
    the temporary directory, mode 0700 (the start time keeps a reused pid out of an
    old start's directory). ``ValueError`` when something else is there (a link, a
    file, another user's directory). Whoever made it removes it when the start ends."""
    name = f"jobmetrics-{framework}-{os.getuid()}-{main_pid}-{start_time(main_pid)}"
    path = os.path.join(tempfile.gettempdir(), name)
    try:
        os.mkdir(path, 0o700)
        made = True
    except FileExistsError:
        made = False
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ValueError(f"{path!r} exists and is not a directory of this user's")
    return path, made


def serve_when_locked(directory: str, serve: Callable[[], bool], where: str
                      ) -> threading.Thread:
    """Call ``serve()`` (start the ``/metrics`` endpoint; ``False`` when it could not)
    once this process holds ``directory``'s serve lock: one process of a worker's start
    serves, the others wait in a thread, and one of them takes over when the holder
    dies. Failures are logged once (as ``where``), never raised."""

    def wait() -> None:
        try:
            fd = os.open(os.path.join(directory, _SERVE_LOCK),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            _errors.report(where, exc)
            return
        if hasattr(os, "register_at_fork"):
            # A process forked from this one must not hold the lock once this one is
            # gone (flock locks belong to the open file, which a fork shares).
            os.register_at_fork(after_in_child=functools.partial(_close, fd))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            _errors.report(where, exc)
            return
        if not serve():
            fcntl.flock(fd, fcntl.LOCK_UN)  # let another process try

    thread = threading.Thread(target=wait, name="jobmetrics-serve", daemon=True)
    thread.start()
    return thread


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
