"""Series budgets that hold for a whole multi-process directory, not for each process.

A budget (:class:`jobmetrics.labels.Budget`) admits at most ``limit`` distinct label values
(task types, queue names, HTTP label sets). Each process keeping its own would let the
merged output hold ``limit`` series *per process*, and a worker whose processes are
recycled (gunicorn's ``max_requests``, Celery's ``max_tasks_per_child``) would grow it
without bound. So the processes of a directory admit into one shared list: the
append-only file ``jobmetrics-budgets.keys``, one JSON line ``[budget name, key]`` per
admitted key, appended under ``flock``. A process reads the lines it has not seen yet only
when it meets a key it has not admitted itself, so the file is touched at most a few times
per key and process, never on the hot path; once the list is full, a process refuses new
keys without touching it (no process may add to a full list, so its copy is final).

The file is the directory's, like the value files: it lives as long as the directory
(a worker start, see :mod:`jobmetrics.forking`), and a new directory starts a new budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from typing import Iterable, Iterator, List, Set, Tuple

from ..labels import BudgetKey

__all__ = ["BUDGETS_FILE", "SharedList"]

#: The file of admitted keys in a multi-process directory.
BUDGETS_FILE = "jobmetrics-budgets.keys"
# A file grown past this was not written by budgets of a sane size (a key is a few dozen
# bytes, a budget a few thousand keys): it is not read, and the list counts as full.
_MAX_BYTES = 64 << 20


def _decode(line: bytes) -> Tuple[str, BudgetKey]:
    name, key = json.loads(line)
    if not isinstance(name, str):
        raise ValueError("not a budget line")
    if isinstance(key, list) and all(isinstance(v, str) for v in key):
        return name, tuple(key)
    if isinstance(key, str):
        return name, key
    raise ValueError("not a budget line")


def _encode(name: str, key: BudgetKey) -> bytes:
    value = list(key) if isinstance(key, tuple) else key
    return json.dumps([name, value], separators=(",", ":")).encode("utf-8") + b"\n"


class SharedList:
    """One budget's admitted keys in ``directory``, as every process sees them.

    Not thread-safe: the budget calls it under its own lock. ``OSError``/``ValueError``
    when the file cannot be used (the budget then falls back to its own count)."""

    __slots__ = ("_offset", "broken", "directory", "full", "keys", "name")

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.keys: Set[BudgetKey] = set()
        self.full = False
        #: The file could not be used: the budget counts on its own (set by the budget).
        self.broken = False
        self._offset = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        path = os.path.join(self.directory, BUDGETS_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{path!r} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._catch_up(fd)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _catch_up(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size > _MAX_BYTES:
            self.full = True
            raise ValueError(f"{BUDGETS_FILE} is {size} bytes: not read; new keys refused")
        if size <= self._offset:
            return
        data = os.pread(fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1  # a line cut by a crash is never complete
        for line in data[:end].splitlines():
            try:
                name, key = _decode(line)
            except (ValueError, TypeError):
                continue  # one bad line costs that line only
            if name == self.name:
                self.keys.add(key)
        self._offset += end

    def admit(self, key: BudgetKey, limit: int) -> bool:
        """Whether ``key`` is (now) one of at most ``limit`` keys of this budget."""
        if key in self.keys:
            return True
        if self.full:
            return False
        with self._locked() as fd:
            if key in self.keys:
                return True
            if len(self.keys) >= limit:
                self.full = True
                return False
            self._append(fd, [key])
            return True

    def add_all(self, keys: Iterable[BudgetKey]) -> None:
        """Record ``keys``, admitted before this process recorded into the directory
        (they are in its cells already), whatever the limit."""
        with self._locked() as fd:
            self._append(fd, [k for k in keys if k not in self.keys])

    def _append(self, fd: int, keys: List[BudgetKey]) -> None:
        if not keys:
            return
        data = b"".join(_encode(self.name, k) for k in keys)
        if os.fstat(fd).st_size != self._offset:  # a line cut by a crash: end it first
            data = b"\n" + data
        os.write(fd, data)  # O_APPEND, under the lock: never interleaved
        self.keys.update(keys)
        self._offset = os.fstat(fd).st_size
