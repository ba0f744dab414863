"""The shared directory: each process's file store, the lock, fork safety, the archive.

Every process writes its cells into ``jobmetrics-<pid>.db`` (one file per process, however
many ``JobMetrics`` it has: keys carry the family's full name, so services with other
prefixes in the same directory never read each other's cells). A scrape in any process
reads every file as one :class:`~jobmetrics.cells.Snapshot`, live or not by its pid and
its writer's start time (a pid can be given to a new process after a kill), plus
the archive, where the files of dead processes are folded (under the lock) so the work
of a scrape grows with the live processes only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .. import _errors
from ..cells import Cells, Columns, Key, MemoryStore, Snapshot
from .valuefile import EMPTY, Reader, ValueFile, writer_start

__all__ = ["ENV_VAR", "FileStore", "check_directory", "compact_pid"]

#: The environment variable that switches multi-process mode on (prometheus_client's).
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "jobmetrics-"
_ARCHIVE = "jobmetrics-archive.db"
_LOCK = "jobmetrics.lock"


def check_directory(directory: object) -> str:
    """The absolute path of an existing, writable directory, or an error naming the
    setting (absolute: a later ``chdir`` must not move it)."""
    if not isinstance(directory, str):
        raise TypeError(f"multiprocess_dir must be a str, got {type(directory).__name__}")
    if not os.path.isdir(directory):
        raise ValueError(
            f"multiprocess_dir={directory!r} (or ${ENV_VAR}) is not a directory: create it "
            "before the workers start, empty, and remove it between runs of the service"
        )
    if not os.access(directory, os.W_OK):
        raise ValueError(f"multiprocess_dir={directory!r} is not writable")
    return os.path.abspath(directory)


# flock() locks belong to the open file, which a forked child shares: a child forked
# while another thread of its parent is inside _locked (Celery forks pool children while
# the main process serves scrapes) would hold that lock for its whole life, and deadlock
# on its own next exclusive lock. So the child closes every lock descriptor it inherits,
# and the guard keeps a fork from landing between an open() and its bookkeeping. It is
# reentrant: a signal handler that forks while its thread holds it must not deadlock.
_fork_guard = threading.RLock()
_lock_fds: Set[int] = set()


@contextlib.contextmanager
def _locked(directory: str, exclusive: bool) -> Iterator[None]:
    with _fork_guard:
        fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                     0o644)
        _lock_fds.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        with _fork_guard:
            _lock_fds.discard(fd)
            os.close(fd)  # closing releases the lock


def _proc_stat(pid: int) -> Optional[Tuple[bytes, int]]:
    """The state and start time (clock ticks since boot) of process ``pid`` from
    ``/proc/<pid>/stat``; ``None`` where it cannot be read (no ``/proc``)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
        finally:
            os.close(fd)
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> int:
    """The start time of process ``pid`` as :func:`_proc_stat` gives it (0 where
    unknown)."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else 0


def _alive(path: str, pid: int) -> bool:
    """Whether the process that wrote ``path`` (named for ``pid``) still runs: a process
    of that pid exists, is no zombie, and (when both are known) started when the writer
    did. A pid the kernel gave to a new process after a kill is not the writer."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid is all there is to go by
    state, start = stat
    if state in (b"Z", b"X"):  # killed, not yet reaped
        return False
    written = writer_start(path)
    return written == 0 or written == start


def _path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{_PREFIX}{pid}.db")


# ---------------------------------------------------------------------------------
# Reading and the archive


# One reader per directory: the key tables of its files, kept from scrape to scrape.
_readers: Dict[str, Reader] = {}


def _reader(directory: str) -> Reader:
    reader = _readers.get(directory)
    if reader is None:
        reader = _readers.setdefault(directory, Reader())
    return reader


def _read(path: str, frozen: bool = False) -> Optional[Columns]:
    """A file's cells; ``None`` when it cannot be read or holds a key that does not
    decode (logged once; the scrape goes on without it)."""
    try:
        return _reader(os.path.dirname(path)).read(path, frozen)
    except FileNotFoundError:
        return Columns(EMPTY, ())
    except (OSError, ValueError, TypeError) as exc:
        _errors.report(f"multiprocess read {os.path.basename(path)!r}", exc)
        return None


def _compact(directory: str, dead: Sequence[str]) -> None:
    """Fold ``dead`` files into the archive and delete them (caller holds the lock).
    A file that cannot be read is left where it is: never delete what was not kept."""
    from ..collect import fold

    if not dead:
        return
    archive = os.path.join(directory, _ARCHIVE)
    merged: Dict[Key, float] = dict(_read(archive, frozen=True) or [])
    folded = []
    for path in dead:
        cells = _read(path)
        if cells is None:
            continue
        fold(merged, list(cells))
        folded.append(path)
    if not folded:
        return
    tmp = archive + f".{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a crashed compaction's; unlink never follows a symlink
    out = ValueFile(tmp, exclusive=True)
    try:
        for key, v in merged.items():
            out.cell(key, v)
    finally:
        out.close()
    os.replace(tmp, archive)
    for path in folded:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _list(directory: str) -> Dict[str, Optional[int]]:
    """The value files in ``directory``, each with its pid (``None`` for the archive)."""
    out: Dict[str, Optional[int]] = {}
    for name in os.listdir(directory):
        if name.startswith(_PREFIX) and name.endswith(".db"):
            digits = name[len(_PREFIX):-3]
            out[os.path.join(directory, name)] = int(digits) if digits.isdigit() else None
    return out


def read_directory(directory: str) -> List[Snapshot]:
    """Every process's cells, folding the files of dead processes into the archive."""
    files = _list(directory)
    alive = {p: pid is not None and _alive(p, pid) for p, pid in files.items()}
    dead = [p for p, pid in files.items() if pid is not None and not alive[p]]
    if dead:
        with _locked(directory, exclusive=True):
            _compact(directory, [p for p in dead if os.path.exists(p)])
    out: List[Snapshot] = []
    with _locked(directory, exclusive=False):
        if dead:  # what the compaction left
            files = _list(directory)
        for path, pid in files.items():
            live = alive.get(path)
            if live is None:
                live = alive[path] = pid is not None and _alive(path, pid)
            cells = _read(path, frozen=path.endswith(_ARCHIVE))
            if cells is not None:
                out.append(Snapshot(live, cells))
    _reader(directory).keep_only(files)
    return out


def compact_pid(directory: str, pid: int) -> None:
    """Fold the file of process ``pid`` into the archive now."""
    path = _path(directory, pid)
    if os.path.exists(path):
        with _locked(directory, exclusive=True):
            _compact(directory, [path] if os.path.exists(path) else [])


def count_live(snapshots: Sequence[Snapshot]) -> int:
    """How many of ``snapshots`` are of live processes."""
    return sum(1 for s in snapshots if s.live)


# ---------------------------------------------------------------------------------
# Writing


class FileStore(Cells):
    """This process's cells in its file in ``directory`` (see the module docstring).

    One per process and directory (:meth:`for_directory`). After a fork the child gets a
    file of its own and every state object made in this store takes new cells in it, so
    nothing is counted twice (gunicorn's ``preload_app``, Celery's prefork pool). When the
    file cannot be created or grown (a full filesystem), this process records into
    memory from then on (logged once): values no other process sees, but no crash.
    """

    def __init__(self, directory: str, publish_interval: float = 1.0) -> None:
        super().__init__()
        self.directory = directory
        self._interval = publish_interval
        self._publishers: List[weakref.WeakMethod[Callable[[], None]]] = []
        self._thread: Optional[threading.Thread] = None
        self._open()

    def _open(self) -> None:
        self.pid = os.getpid()
        self._file: Optional[ValueFile] = None
        self.values: Union[List[float], memoryview[float]] = []
        path = _path(self.directory, self.pid)
        try:
            if os.path.lexists(path):  # left by an earlier process that had our pid
                with _locked(self.directory, exclusive=True):
                    _compact(self.directory, [path])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._file = ValueFile(path, start=process_start(os.getpid()))
            self.values = self._file.values
        except OSError as exc:
            if os.path.isdir(self.directory):  # a removed directory is nobody's to scrape
                _errors.report(f"multiprocess file in {self.directory!r}", exc)

    def cell(self, key: Key, initial: float = 0.0) -> int:
        with self.lock:
            h = self.handles.get(key)
            if h is None:
                f = self._file
                if f is not None:
                    try:
                        h = f.cell(key, initial)
                        self.values = f.values
                    except OSError as exc:
                        _errors.report(f"multiprocess file in {self.directory!r}", exc)
                        self._to_memory()
                if h is None:
                    values = self.values
                    assert isinstance(values, list)
                    h = len(values)
                    values.append(initial)
                self.handles[key] = h
            return h

    def _to_memory(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            self.values = list(f.values)
            f.close()

    def snapshots(self) -> List[Snapshot]:
        return read_directory(self.directory)

    def publish_every(self, publish: Callable[[], None]) -> None:
        """Call ``publish`` (a bound method, held weakly) every ``publish_interval``
        seconds from a daemon thread, so scrapes in other processes see fresh values."""
        with self.lock:
            self._publishers.append(weakref.WeakMethod(publish))
            self._start()

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        ref = weakref.ref(self)
        interval = self._interval

        def loop() -> None:
            while True:
                time.sleep(interval)
                store = ref()
                if store is None or store.pid != os.getpid():
                    return
                for wm in list(store._publishers):
                    fn = wm()
                    if fn is not None:
                        fn()
                del store

        self._thread = threading.Thread(target=loop, name="jobmetrics-publish", daemon=True)
        self._thread.start()

    def after_fork(self) -> None:
        """In the child: a new lock, a new file, every state object bound anew."""
        self._reinit_lock()
        self.handles = {}
        self._file = None
        self._open()
        self._bind_all()
        self._thread = None
        if self._publishers:  # threads do not survive a fork
            self._start()

    def _bind_all(self) -> None:
        # Every state object made in this store takes its cells again.
        for state in self.states():
            bind = getattr(state, "bind", None)
            if bind is not None:
                try:
                    bind()
                except Exception as exc:  # pragma: no cover - defensive
                    _errors.report("multiprocess bind", exc)

    @classmethod
    def adopt(cls, store: MemoryStore, directory: str) -> FileStore:
        """Turn ``store``, this process's memory store, into the file store of
        ``directory`` (an absolute path) in place, its cells' values kept: every state
        object, decorator and wrapper holding ``store`` records into the file from now on,
        as a forked child's store is re-opened in place. ``ValueError`` when this process
        already has a store there."""
        with _stores_lock:
            if directory in _stores:
                raise ValueError(
                    f"multiprocess_dir={directory!r}: another JobMetrics of this process "
                    "already records there")
            fresh = cls(directory)
            with store.lock:
                items = store.detach()
                kept = {"lock": store.lock, "_states": store._states}
                store.__class__ = cls  # type: ignore[assignment]
                adopted: FileStore = store  # type: ignore[assignment]
                vars(adopted).update({**vars(fresh), **kept, "handles": {}})
                for key, value in items:
                    adopted.cell(key, value)
                adopted._bind_all()
            _stores[directory] = adopted
        return adopted

    @classmethod
    def for_directory(cls, directory: str) -> FileStore:
        """This process's store in ``directory`` (an absolute path)."""
        with _stores_lock:
            store = _stores.get(directory)
            if store is None:
                store = _stores[directory] = cls(directory)
            return store


_stores: Dict[str, FileStore] = {}
_stores_lock = threading.Lock()


def _after_fork_in_child() -> None:
    for fd in _lock_fds:  # the parent's, not ours: see _locked
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    _fork_guard.release()
    global _stores_lock
    _stores_lock = threading.Lock()
    for store in list(_stores.values()):
        store.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_guard.acquire, after_in_parent=_fork_guard.release,
                        after_in_child=_after_fork_in_child)

