"""One process's cells in a memory-mapped file, readable by any other process.

Multi-process mode keeps every cell of a process in ``<dir>/jobmetrics-<pid>.db``: an
append-only table of ``key -> float64``. The writer updates a value with one 8-byte store
into the mapping (through a ``memoryview`` of float64s, so the state code indexes it as it
indexes a list), so values survive the process being killed (the page cache holds them).

Layout (little endian): ``b"JMv2"``, ``uint32 used`` (bytes in use), then entries, each
8-byte aligned: ``uint32 key length``, the key (JSON of ``[family, [labels], [part]]``,
UTF-8) padded with spaces so the value is 8-byte aligned, ``float64 value``. A cell's
handle is its value's offset / 8. The writer fills an entry before it publishes the new
``used``, so a reader never sees half an entry; a file cut short by a crash or the disk is
read up to its last whole entry, and a file that is not ours reads as empty.

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
from typing import Dict, List, Tuple, cast

from ..cells import Key

__all__ = ["ValueFile", "read_cells"]

MAGIC = b"JMv2"
_HEADER = 8
_INITIAL_SIZE = 1 << 16
_u32 = struct.Struct("<I")
_f64 = struct.Struct("<d")


def encode_key(key: Key) -> bytes:
    """The bytes a key is stored as."""
    fam, labels, part = key
    return json.dumps([fam, list(labels), [int(p) for p in part]],
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ValueFile:
    """The writer side: one per process. Not thread-safe; callers hold the store's lock."""

    def __init__(self, path: str, exclusive: bool = False) -> None:
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


def parse(data: bytes) -> List[Tuple[Key, float]]:
    """The cells in the bytes of a value file; ``[]`` for a file that is not one.

    A torn tail (never published) is left out; an entry whose key does not decode raises
    ``ValueError``, so the caller can skip that whole file.
    """
    if len(data) < _HEADER or data[0:4] != MAGIC:
        return []
    used = min(_u32.unpack_from(data, 4)[0], len(data))
    out: List[Tuple[Key, float]] = []
    pos = _HEADER
    unpack_u32, unpack_f64 = _u32.unpack_from, _f64.unpack_from
    while pos + 4 <= used:
        n = cast(int, unpack_u32(data, pos)[0])
        end = pos + 4 + n + (8 - (4 + n) % 8) % 8 + 8
        if end > used:
            break  # torn: the rest was never published
        out.append((_decode(data[pos + 4:pos + 4 + n]), unpack_f64(data, end - 8)[0]))
        pos = end
    return out


def read_bytes(path: str, strict: bool = False) -> bytes:
    """The published bytes of a value file (``b""`` for a foreign one).

    Opened without following symlinks and without blocking: a FIFO planted under a value
    file's name must not hang the scrape. A missing or unreadable file, or anything but a
    regular file, is ``b""``, or with ``strict`` an ``OSError`` (``ValueError`` for a
    file that is not regular), so the caller can tell it from an empty one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if strict:
            raise
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            if strict:
                raise ValueError(f"{path!r} is not a regular file")
            return b""
        with os.fdopen(fd, "rb", closefd=False) as f:
            head = f.read(_HEADER)
            if len(head) < _HEADER or head[0:4] != MAGIC:
                return b""
            used = _u32.unpack_from(head, 4)[0]
            return head + f.read(max(0, used - _HEADER))
    except OSError:
        if strict:
            raise
        return b""
    finally:
        os.close(fd)


def read_cells(path: str) -> List[Tuple[Key, float]]:
    """Every cell of a value file; ``[]`` for a missing, empty or foreign file."""
    return parse(read_bytes(path))
