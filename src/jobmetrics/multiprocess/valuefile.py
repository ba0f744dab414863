"""One process's cells in a memory-mapped file, readable by any other process.

Multi-process mode keeps every cell of a process in ``<dir>/jobmetrics-<pid>.db``: an
append-only table of ``key -> float64``. The writer updates a value with one 8-byte store
into the mapping (through a ``memoryview`` of float64s, so the state code indexes it as it
indexes a list), so values survive the process being killed (the page cache holds them).

Layout (little endian): ``b"JMv4"``, ``uint32 used`` (bytes in use), ``8 bytes nonce``
(random, fixed for the file's life), ``uint64 start`` (the writer's start time, in clock
ticks since boot as ``/proc/<pid>/stat`` gives it; 0 when unknown: a pid that lives again
in another process is not the writer), then entries, each 8-byte aligned: ``uint32 key
length``, the key (JSON of ``[family, [labels], [part]]``, UTF-8) padded with spaces so the
value is 8-byte aligned, ``float64 value``. A cell's handle is its value's offset / 8. The
writer fills an entry before it publishes the new ``used``, so a reader never sees half an
entry; a file cut short by a crash or the disk is read up to its last whole entry, and a
file that is not ours reads as empty. ``JMv3`` files (no start, 16-byte header) and
``JMv2`` files (no nonce, 8-byte header) of earlier releases are still read.

Keys are append-only, so a reader decodes a file's keys once: a :class:`KeyTable` (the keys
in entry order and one ``struct`` that picks every value out of the published bytes)
stays valid while the file's nonce is the same and ``used`` does not shrink, and is
extended by the new entries when ``used`` grows (:class:`Reader`). A scrape of an
unchanged key set then costs one read and one ``unpack`` per file.

File space is allocated (``posix_fallocate``) before it is mapped: a store into a sparse
mapping on a full filesystem is a SIGBUS that kills the process. When space cannot be had,
the file keeps what it has and :class:`ValueFile` raises :class:`OSError` from
:meth:`ValueFile.cell`; the store falls back to memory (see ``directory.py``).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
from typing import Dict, List, Optional, Tuple, cast

from ..cells import Columns, Key

__all__ = ["EMPTY", "KeyTable", "Reader", "ValueFile", "read_cells", "writer_start"]

MAGIC = b"JMv4"
_MAGIC_V3 = b"JMv3"
_MAGIC_V2 = b"JMv2"
_MAGICS = (MAGIC, _MAGIC_V3, _MAGIC_V2)
_HEADER = 24
_HEADER_V3 = 16
_HEADER_V2 = 8
_INITIAL_SIZE = 1 << 16
_u32 = struct.Struct("<I")
_f64 = struct.Struct("<d")
_u64 = struct.Struct("<Q")


def encode_key(key: Key) -> bytes:
    """The bytes a key is stored as."""
    fam, labels, part = key
    return json.dumps([fam, list(labels), [int(p) for p in part]],
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ValueFile:
    """The writer side: one per process. Not thread-safe; callers hold the store's lock."""

    def __init__(self, path: str, exclusive: bool = False, start: int = 0) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        self._fd = fd
        self._capacity = 0
        # Mappings replaced by a larger one stay open: a memoryview of them may still be
        # held by a reader of ``values`` in another thread.
        self._old: List[Tuple[mmap.mmap, memoryview[float]]] = []
        self._map, self.values = self._grow(_INITIAL_SIZE)
        self._map[0:4] = MAGIC
        self._map[8:16] = os.urandom(8)  # the nonce: readers' cached keys are this file's
        self._map[16:24] = _u64.pack(start)
        self._used = _HEADER
        self._map[4:8] = _u32.pack(self._used)

    def _grow(self, capacity: int) -> Tuple[mmap.mmap, memoryview[float]]:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self._fd, 0, capacity)  # OSError (ENOSPC) before any mapping
        else:  # pragma: no cover - macOS
            os.ftruncate(self._fd, capacity)
        m = mmap.mmap(self._fd, capacity)
        self._capacity = capacity
        values: memoryview[float] = memoryview(m).cast("d")
        return m, values

    def cell(self, key: Key, initial: float = 0.0) -> int:
        """Add ``key``'s entry with value ``initial``; return its handle."""
        raw = encode_key(key)
        pad = (8 - (4 + len(raw)) % 8) % 8
        entry = _u32.pack(len(raw)) + raw + b" " * pad + _f64.pack(initial)
        if self._used + len(entry) > self._capacity:
            capacity = self._capacity
            while self._used + len(entry) > capacity:
                capacity *= 2
            new_map, new_values = self._grow(capacity)
            self._old.append((self._map, self.values))
            self._map, self.values = new_map, new_values
        start = self._used
        self._map[start:start + len(entry)] = entry
        self._used += len(entry)
        # Publish only after the entry is complete.
        self._map[4:8] = _u32.pack(self._used)
        return (self._used - 8) // 8

    def close(self) -> None:
        """Stop writing (the file stays for readers). Mappings whose values may still be
        referenced are left to the garbage collector."""
        os.close(self._fd)


# Keys repeat from scrape to scrape and across files: decode each once.
_decoded: Dict[bytes, Key] = {}
_MAX_DECODED = 200_000


def _decode(raw: bytes) -> Key:
    key = _decoded.get(raw)
    if key is None:
        fam, labels, part = json.loads(raw)
        if not isinstance(fam, str) or not isinstance(labels, list) or not isinstance(
                part, list) or not part:
            raise ValueError("not a cell key")
        key = (fam, tuple(str(v) for v in labels), tuple(int(p) for p in part))
        if len(_decoded) >= _MAX_DECODED:
            _decoded.clear()
        _decoded[raw] = key
    return key


class KeyTable:
    """The keys of one value file up to ``used``, in entry order, and the ``struct``
    that unpacks all their values from the file's bytes in one call. Immutable: a
    grown file gets a new table (:meth:`extended`), so one can be shared between threads
    and cached by whoever reads with it (``plans``: see ``collect.merge``)."""

    __slots__ = ("_fmt", "keys", "nonce", "plans", "unpack", "used")

    def __init__(self, nonce: bytes, used: int, keys: Tuple[Key, ...], fmt: str) -> None:
        self.nonce = nonce
        self.used = used  # the end of the last whole entry
        self.keys = keys
        self._fmt = fmt
        self.unpack = struct.Struct(fmt).unpack_from
        self.plans: Dict[object, object] = {}

    @classmethod
    def parse(cls, data: bytes) -> Optional[KeyTable]:
        """The table of the bytes of a value file; ``None`` for a file that is not one.

        A torn tail (never published) is left out; an entry whose key does not decode
        raises ``ValueError``, so the caller can skip that whole file.
        """
        if len(data) >= _HEADER and data[0:4] == MAGIC:
            return cls._parse(data, data[8:16], _HEADER, (), f"<{_HEADER}x")
        if len(data) >= _HEADER_V3 and data[0:4] == _MAGIC_V3:
            return cls._parse(data, data[8:16], _HEADER_V3, (), f"<{_HEADER_V3}x")
        if len(data) >= _HEADER_V2 and data[0:4] == _MAGIC_V2:
            return cls._parse(data, b"", _HEADER_V2, (), f"<{_HEADER_V2}x")
        return None

    def extended(self, data: bytes) -> KeyTable:
        """This table with the entries published in ``data`` after ``used``."""
        grown = self._parse(data, self.nonce, self.used, self.keys, self._fmt)
        return self if grown.used == self.used else grown

    @classmethod
    def _parse(cls, data: bytes, nonce: bytes, pos: int, keys: Tuple[Key, ...],
               fmt: str) -> KeyTable:
        used = min(_u32.unpack_from(data, 4)[0], len(data))
        new: List[Key] = []
        offsets: List[int] = []  # of each new value
        start = pos
        unpack_u32, known = _u32.unpack_from, _decoded.get
        while pos + 4 <= used:
            kend = pos + 4 + cast(int, unpack_u32(data, pos)[0])
            end = ((kend + 7) & ~7) + 8  # the value is 8-byte aligned after the key
            if end > used:
                break  # torn: the rest was never published
            raw = data[pos + 4:kend]
            new.append(known(raw) or _decode(raw))
            offsets.append(end - 8)
            pos = end
        ends = [start, *(o + 8 for o in offsets)]
        gaps = [f"{o - e}xd" for o, e in zip(offsets, ends)]
        last = ends[-1]
        return cls(nonce, last, keys + tuple(new), fmt + "".join(gaps))


def parse(data: bytes) -> List[Tuple[Key, float]]:
    """The cells in the bytes of a value file; ``[]`` for a file that is not one (see
    :meth:`KeyTable.parse`)."""
    table = KeyTable.parse(data)
    if table is None:
        return []
    return list(zip(table.keys, table.unpack(data)))


def _open_regular(path: str) -> Tuple[int, os.stat_result]:
    """A read-only descriptor of a regular file, opened without following symlinks and
    without blocking: a FIFO planted under a value file's name must not hang the scrape."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path!r} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_published(fd: int, hint: int) -> bytes:
    """The published bytes of an open value file (``b""`` for a foreign one), in one
    read when ``hint`` (the size last seen) still covers them."""
    data = os.pread(fd, max(hint, 4096), 0)
    if len(data) < _HEADER_V2 or data[0:4] not in _MAGICS:
        return b""
    used = _u32.unpack_from(data, 4)[0]
    if used > len(data):
        got = len(data)
        if got == max(hint, 4096):  # not the end of the file: read the rest
            data += os.pread(fd, used - got, got)
    return data[:used]


def read_bytes(path: str, strict: bool = False) -> bytes:
    """The published bytes of a value file (``b""`` for a foreign one).

    A missing or unreadable file, or anything but a regular file, is ``b""``, or with
    ``strict`` an ``OSError`` (``ValueError`` for a file that is not regular), so the
    caller can tell it from an empty one.
    """
    try:
        fd, _ = _open_regular(path)
    except (OSError, ValueError):
        if strict:
            raise
        return b""
    try:
        return _read_published(fd, 1 << 16)
    except OSError:
        if strict:
            raise
        return b""
    finally:
        os.close(fd)


def writer_start(path: str) -> int:
    """The start time its writer stored in the value file at ``path`` (0: none stored,
    an earlier format, or not readable)."""
    try:
        fd, _ = _open_regular(path)
    except (OSError, ValueError):
        return 0
    try:
        head = os.pread(fd, _HEADER, 0)
    except OSError:
        return 0
    finally:
        os.close(fd)
    if len(head) < _HEADER or head[0:4] != MAGIC:
        return 0
    return cast(int, _u64.unpack_from(head, 16)[0])


def read_cells(path: str) -> List[Tuple[Key, float]]:
    """Every cell of a value file; ``[]`` for a missing, empty or foreign file."""
    return parse(read_bytes(path))


#: The table of a file with no cells.
EMPTY = KeyTable(b"", 0, (), "<")


class _Cached:
    __slots__ = ("ident", "table", "values")

    def __init__(self, ident: Tuple[int, ...], table: KeyTable,
                 values: Tuple[float, ...]) -> None:
        self.ident = ident
        self.table = table
        self.values = values


class Reader:
    """Reads the value files of one directory scrape after scrape, keeping each file's
    :class:`KeyTable` (by path, checked by the file's inode and nonce) so an unchanged
    key set is not decoded again. A *frozen* file (the archive: written once, then
    renamed into place) is not even read again while its inode, size and times are the
    same. Thread-safe: entries are replaced whole, never changed in place."""

    def __init__(self) -> None:
        self._files: Dict[str, _Cached] = {}

    def read(self, path: str, frozen: bool = False) -> Columns:
        """The cells of the file at ``path``: ``OSError`` when it cannot be read,
        ``ValueError`` when it is not a regular file or holds a key that does not decode
        (:class:`FileNotFoundError` for a file gone)."""
        fd, st = _open_regular(path)
        try:
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            cached = self._files.get(path)
            if cached is not None and frozen and cached.ident == ident:
                return Columns(cached.table, cached.values)
            old = cached.table if cached is not None and cached.ident[:2] == ident[:2] \
                else None
            data = _read_published(fd, old.used if old is not None else 1 << 16)
        finally:
            os.close(fd)
        table = self._table(old, data)
        values = table.unpack(data) if table.keys else ()
        self._files[path] = _Cached(ident, table, values)
        return Columns(table, values)

    @staticmethod
    def _table(old: Optional[KeyTable], data: bytes) -> KeyTable:
        if old is not None and old.nonce and len(data) >= _HEADER \
                and data[8:16] == old.nonce and data[0:4] == MAGIC:
            if len(data) == old.used:
                return old
            if len(data) > old.used:
                return old.extended(data)
        return KeyTable.parse(data) or EMPTY

    def keep_only(self, paths: object) -> None:
        """Forget every file but ``paths`` (a container of paths)."""
        for path in list(self._files):  # a copy: another thread may add meanwhile
            if path not in paths:  # type: ignore[operator]
                self._files.pop(path, None)
