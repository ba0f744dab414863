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

from .cells import MemoryStore, _memory_stores
from .multiprocess import check_directory
from .multiprocess import directory as _directory

if TYPE_CHECKING:
    from .core import JobMetrics

__all__ = ["ensure_directory", "needs_directory", "record_into", "worker_directory"]

# What the store keeps when it becomes a file store: its lock and its state objects (the
# rest is taken from a FileStore made for the directory, whatever fields it has).
_KEPT = frozenset({"lock", "_states", "handles"})


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
    """Make ``metrics`` record into the multi-process ``directory`` from now on.

    Values recorded so far move with it. Returns ``False`` (and changes nothing) when
    ``metrics`` is disabled or already records into a directory. Call it before the
    worker forks: a process forked earlier keeps recording into its own memory.
    Raises ``ValueError`` when ``directory`` is not a writable directory or another
    ``JobMetrics`` of this process already records there.
    """
    service = metrics._service
    if service is None:
        return False
    store = service.store
    if not isinstance(store, MemoryStore):
        return False
    path = check_directory(directory)
    with _directory._stores_lock:
        if path in _directory._stores:
            raise ValueError(
                f"multiprocess_dir={directory!r}: another JobMetrics of this process already "
                "records there")
        fresh = _directory.FileStore(path)
        with store.lock:
            items = list(zip(store._keys, store.values))
            # The state objects, decorators and wrappers all hold this store: it becomes
            # the file store in place, as a forked child's store is re-opened in place.
            store.__class__ = _directory.FileStore  # type: ignore[assignment]
            for name, value in vars(fresh).items():
                if name not in _KEPT:
                    setattr(store, name, value)
            del store._keys
            store.handles = {}
            for key, value in items:
                store.cell(key, value)
            for state in store.states():
                bind = getattr(state, "bind", None)
                if bind is not None:
                    bind()
        _directory._stores[path] = store  # type: ignore[assignment]
    _memory_stores.discard(store)
    return True


def needs_directory(metrics: JobMetrics) -> bool:
    """``metrics`` records into this process's memory (no directory, not disabled)."""
    service = metrics._service
    return service is not None and isinstance(service.store, MemoryStore)


def ensure_directory(metrics: JobMetrics) -> Optional[str]:
    """For a worker about to fork: if ``metrics`` records into memory, give it a fresh
    :func:`worker_directory`; return that directory, else ``None``."""
    if not needs_directory(metrics):
        return None
    path = worker_directory()
    record_into(metrics, path)
    return path

