"""Label values that can always be exposed.

A label value comes from user data (a task type from a JSON body, a queue's ``type_of``,
an ``operation=`` callable). One that cannot be encoded as UTF-8 (a lone surrogate) would
make every later scrape of the registry fail, so values are cleaned where they enter a
cell key: lone surrogates become U+FFFD, and a value that is not a ``str`` becomes
``"unknown"`` (logged once).
"""

from __future__ import annotations

import threading
from typing import Set, Tuple

from . import _errors

__all__ = ["OVERFLOW", "UNKNOWN", "Budget", "clean"]

UNKNOWN = "unknown"
#: The label value of new series once a budget is spent.
OVERFLOW = "overflow"


def _clean_one(value: object) -> str:
    if not isinstance(value, str):
        _errors.report("label value", TypeError(
            f"a label value must be a str, got {type(value).__name__}; recorded as "
            f"{UNKNOWN!r}"))
        return UNKNOWN
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


def clean(values: Tuple[object, ...]) -> Tuple[str, ...]:
    """``values`` as label values that encode (see the module docstring)."""
    return tuple(_clean_one(v) for v in values)


class Budget:
    """At most ``limit`` distinct values of one label (task types, queue names); past it a
    new value becomes :data:`OVERFLOW`, with one warning. Values come from user data (a
    task type from a request body), so their number must be bounded, as the series are."""

    __slots__ = ("_lock", "_seen", "_warned", "limit", "what")

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self._seen: Set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def admit(self, value: str) -> str:
        """``value``, or :data:`OVERFLOW` when the budget is spent."""
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit or value in self._seen:
                self._seen.add(value)
                return value
            if not self._warned:
                self._warned = True
                _errors.logger.warning(
                    "jobmetrics: more than %d %s; new ones are recorded as %r (raise "
                    "max_series, or map them to fewer names)", self.limit, self.what, OVERFLOW)
        return OVERFLOW
