"""Label values that can always be exposed.

A label value comes from user data (a task type from a JSON body, a queue's ``type_of``,
an ``operation=`` callable). One that cannot be encoded as UTF-8 (a lone surrogate) would
make every later scrape of the registry fail, so values are cleaned where they enter a
cell key: lone surrogates become U+FFFD, and a value that is not a ``str`` becomes
``"unknown"`` (logged once).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Optional, Set, Tuple, Union

from . import _errors

if TYPE_CHECKING:
    from .multiprocess.budgets import SharedList

__all__ = ["OVERFLOW", "UNKNOWN", "Budget", "BudgetKey", "clean"]

UNKNOWN = "unknown"
#: The label value of new series once a budget is spent.
OVERFLOW = "overflow"
#: What a budget counts: one label value, or a tuple of them.
BudgetKey = Union[str, Tuple[str, ...]]


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
    """At most ``limit`` distinct keys (task types, queue names, HTTP label sets); past it a
    new key is refused (recorded as :data:`OVERFLOW`), with one warning. Keys come from
    user data (a task type from a request body), so their number must be bounded, as the
    series are.

    In multi-process mode (``store`` records into a directory) the budget holds for the
    directory's merged output, not per process: its processes admit into one shared list
    (:mod:`jobmetrics.multiprocess.budgets`), so recycled workers do not multiply it.
    ``name`` tells budgets apart there (the family they bound)."""

    __slots__ = ("__weakref__", "_lock", "_shared", "_store", "_warned", "hint", "limit",
                 "name", "seen", "what")

    def __init__(self, what: str, limit: int, store: object = None, name: str = "",
                 hint: str = f"new ones are recorded as {OVERFLOW!r} (raise max_series, or "
                             "map them to fewer names)") -> None:
        self.what = what
        self.limit = limit
        self.name = name or what
        self.hint = hint
        self._store = store
        #: The keys admitted by this process (a hot path may test ``key in seen`` first).
        self.seen: Set[BudgetKey] = set()
        self._shared: Optional[SharedList] = None
        self._lock = threading.Lock()
        self._warned = False
        _budgets.add(self)

    def admits(self, key: BudgetKey) -> bool:
        """Whether ``key`` may be recorded as it is."""
        if key in self.seen:
            return True
        with self._lock:
            if key in self.seen:
                return True
            if self._room(key):
                self.seen.add(key)
                return True
            if not self._warned:
                self._warned = True
                _errors.logger.warning("jobmetrics: more than %d %s; %s", self.limit,
                                       self.what, self.hint)
        return False

    def admit(self, value: str) -> str:
        """``value``, or :data:`OVERFLOW` when the budget is spent."""
        return value if self.admits(value) else OVERFLOW

    def _room(self, key: BudgetKey) -> bool:
        shared = self._shared_list()
        if shared is not None:
            try:
                return shared.admit(key, self.limit)
            except (OSError, ValueError) as exc:
                # This process counts on its own from now on (the budget is then per
                # process, as without a directory), and says so once.
                _errors.report(f"series budget in {shared.directory!r}", exc)
                shared.broken = True
                if shared.full:
                    return False
        return len(self.seen) < self.limit

    def _shared_list(self) -> Optional[SharedList]:
        directory = getattr(self._store, "directory", None)
        if not isinstance(directory, str):
            return None
        shared = self._shared
        if shared is None or shared.directory != directory:
            from .multiprocess.budgets import SharedList

            shared = self._shared = SharedList(directory, self.name)
        return None if shared.broken else shared

    def bind(self) -> None:
        """The store was re-opened (this process forked, or it moved into a directory):
        what this process admitted so far goes into the shared list."""
        shared = self._shared_list()
        if shared is not None and self.seen:
            try:
                shared.add_all(list(self.seen))
            except (OSError, ValueError) as exc:
                _errors.report(f"series budget in {shared.directory!r}", exc)
                shared.broken = True


_budgets: weakref.WeakSet[Budget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A fork can happen while another thread holds a budget's lock.
    for budget in list(_budgets):
        budget._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
