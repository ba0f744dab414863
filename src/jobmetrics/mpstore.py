"""One process's metric values in a memory-mapped file, readable by any other process.

Multi-process mode keeps every value of a process in ``<dir>/jobmetrics-<pid>.db``: an
append-only table of ``key -> float64``. A write is one 8-byte store into the mapping, so
values survive the process being killed (the page cache holds them) and cost about as
much as prometheus_client's own multi-process values.

Layout (little endian): ``b"JMv1"``, ``uint32 used`` (bytes in use), then entries, each
8-byte aligned: ``uint32 key length``, the UTF-8 key padded with spaces so the value is
8-byte aligned, ``float64 value``. The writer fills an entry before it publishes the new
``used``, so a reader never sees half an entry; a file cut short by a crash or the disk
is read up to its last whole entry, and a file that is not ours reads as empty.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Dict, Iterator, Tuple

__all__ = ["ValueFile", "read_values"]

MAGIC = b"JMv1"
_HEADER = 8
_INITIAL_SIZE = 1 << 16
_u32 = struct.Struct("<I")
_f64 = struct.Struct("<d")
_pack_f64 = _f64.pack


class ValueFile:
    """The writer side: one per process. Not thread-safe; callers hold a lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._file = os.fdopen(fd, "r+b")
        self._capacity = _INITIAL_SIZE
        self._file.truncate(self._capacity)
        self._map = mmap.mmap(self._file.fileno(), self._capacity)
        self._map[0:4] = MAGIC
        self._used = _HEADER
        self._map[4:8] = _u32.pack(self._used)
        self.offsets: Dict[str, int] = {}

    def offset(self, key: str) -> int:
        """The offset of ``key``'s value, adding the entry (value 0) on first use."""
        off = self.offsets.get(key)
        if off is not None:
            return off
        raw = key.encode("utf-8")
        pad = (8 - (4 + len(raw)) % 8) % 8
        entry = _u32.pack(len(raw)) + raw + b" " * pad + _pack_f64(0.0)
        while self._used + len(entry) > self._capacity:
            self._capacity *= 2
            self._file.truncate(self._capacity)
            self._map.close()
            self._map = mmap.mmap(self._file.fileno(), self._capacity)
        start = self._used
        self._map[start:start + len(entry)] = entry
        self._used += len(entry)
        # Publish only after the entry is complete.
        self._map[4:8] = _u32.pack(self._used)
        off = self._used - 8
        self.offsets[key] = off
        return off

    def write(self, off: int, value: float) -> None:
        """Store ``value`` at ``off`` (one 8-byte slice assignment, not pack_into, which
        would briefly write zeros a reader could see)."""
        self._map[off:off + 8] = _pack_f64(value)

    def set(self, key: str, value: float) -> None:
        """Store ``value`` under ``key``."""
        self.write(self.offset(key), value)

    def close(self) -> None:
        """Unmap and close (the file stays for readers)."""
        self._map.close()
        self._file.close()


def _entries(data: bytes) -> Iterator[Tuple[str, float]]:
    if len(data) < _HEADER or data[0:4] != MAGIC:
        return
    used = min(_u32.unpack_from(data, 4)[0], len(data))
    pos = _HEADER
    while pos + 4 <= used:
        n = _u32.unpack_from(data, pos)[0]
        pad = (8 - (4 + n) % 8) % 8
        end = pos + 4 + n + pad + 8
        if end > used:
            return  # torn: the rest was never published
        try:
            key = data[pos + 4:pos + 4 + n].decode("utf-8")
        except UnicodeDecodeError:
            return
        yield key, _f64.unpack_from(data, end - 8)[0]
        pos = end


def read_values(path: str) -> Dict[str, float]:
    """Every ``key -> value`` of a value file; ``{}`` for a missing, empty or foreign file."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
            if len(head) < _HEADER or head[0:4] != MAGIC:
                return {}
            used = _u32.unpack_from(head, 4)[0]
            data = head + f.read(max(0, used - _HEADER))
    except OSError:
        return {}
    return dict(_entries(data))
