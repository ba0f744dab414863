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
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Optional

from . import _errors

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["ensure_directory", "fold_own_file", "needs_directory", "record_into",
           "worker_directory"]

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

