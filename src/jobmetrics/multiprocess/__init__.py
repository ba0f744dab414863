"""Multi-process mode: one answer for all the worker processes behind one endpoint.

gunicorn and uvicorn run several workers, Celery's prefork pool forks children, and
Prometheus scrapes just one of them per request. In multi-process mode every process
writes its cells to its own memory-mapped file in a shared directory (see
:mod:`jobmetrics.multiprocess.valuefile`), and a scrape of any process reads all the files:

- counters, ``_sum``/``_count`` and histogram buckets are summed over every process
  that ever ran (dead ones included, so a restart loses no count);
- ``http_inflight_requests``, ``running_task``, ``pending_task`` and ``queue_size`` are
  summed over the processes alive now;
- summary quantiles come from the *merged sketches* of all processes, and the success
  rate from their merged window: the same numbers one process doing all the work gives;
- ``info`` is one series for the whole service (``workers`` defaults to the number of
  live processes).

Windows are aligned to the system's monotonic clock (every process rotates its age
buckets at the same instants), so they merge bucket by bucket.

The files of dead processes are folded into one archive file, under a lock, by the next
scrape (or at once by :func:`mark_process_dead`, for gunicorn's ``child_exit`` hook),
so the work of a scrape grows with the live processes only, however many have come and
gone.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .. import _errors
from .._errors import logger
from .directory import ENV_VAR, FileStore, check_directory, compact_pid

__all__ = [
    "ENV_VAR",
    "FileStore",
    "check_directory",
    "child_exit",
    "mark_process_dead",
    "setup_celery",
]


def _directory(directory: Optional[str]) -> Optional[str]:
    """The directory a helper works in: the one given, else the environment's."""
    return directory or os.environ.get(ENV_VAR)


def mark_process_dead(pid: int, directory: Optional[str] = None) -> None:
    """Fold the values of process ``pid`` into the archive now.

    For gunicorn's ``child_exit`` hook (``def child_exit(server, worker):
    mark_process_dead(worker.pid)``). Without it the next scrape does the same, once it
    sees the process is gone.
    """
    directory = _directory(directory)
    if not directory:
        raise ValueError(f"no directory: pass directory= or set ${ENV_VAR}")
    compact_pid(os.path.abspath(directory), pid)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook, ready to use: in ``gunicorn.conf.py`` write
    ``from jobmetrics.multiprocess import child_exit``."""
    mark_process_dead(worker.pid)


def setup_celery(directory: Optional[str] = None) -> None:
    """Fold each Celery prefork child's values into the archive as it shuts down.

    Call once where the Celery app is defined (a process that only sends tasks imports it
    too: there it does nothing). Children are forked with a file of their own (see
    :class:`ProcessStore`); this only makes their exit cheap for the next scrape. A
    prefork worker started without multi-process mode logs a warning as it starts: its
    children would record into memory that no scrape of the main process reads.
    """
    from celery.signals import worker_init, worker_process_shutdown

    def on_init(sender: Any = None, **_: Any) -> None:
        pool = getattr(sender, "pool_cls", None)
        name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        if "prefork" in str(name) and not _directory(directory):
            logger.warning(
                "jobmetrics: Celery prefork pool without multi-process mode: each child "
                "records into its own memory and the main process's /metrics shows none "
                "of it; export %s (an empty directory) before starting the worker", ENV_VAR)

    def on_shutdown(**_: Any) -> None:
        if not _directory(directory):
            return  # not in multi-process mode: nothing was written
        try:
            mark_process_dead(os.getpid(), directory)
        except Exception as exc:
            _errors.report("celery worker_process_shutdown", exc)

    worker_init.connect(on_init, weak=False)
    worker_process_shutdown.connect(on_shutdown, weak=False)
