"""Label values that can always be exposed.

A label value comes from user data (a task type from a JSON body, a queue's ``type_of``,
an ``operation=`` callable). One that cannot be encoded as UTF-8 (a lone surrogate) would
make every later scrape of the registry fail, so values are cleaned where they enter a
cell key: lone surrogates become U+FFFD, and a value that is not a ``str`` becomes
``"unknown"`` (logged once).
"""

from __future__ import annotations

from typing import Tuple

from . import _errors

__all__ = ["UNKNOWN", "clean"]

UNKNOWN = "unknown"


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
