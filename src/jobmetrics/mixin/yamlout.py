"""A YAML writer for the plain data of rule files: mappings, lists, strings, numbers.

The standard library has no YAML; rule files need only this subset. Strings are
double-quoted as JSON quotes them (JSON strings are YAML strings), and a string with
newlines, such as a PromQL expression, becomes a literal block so it reads as written.
"""

from __future__ import annotations

import json
from typing import List, Mapping, Sequence, Union

__all__ = ["Data", "dump"]

Data = Union[str, int, float, bool, None, Sequence["Data"], Mapping[str, "Data"]]


def _scalar(value: Data) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _block(text: str, indent: str) -> List[str]:
    # "|-": keep the newlines, drop the final one; lines are stripped of trailing blanks,
    # which a literal block could not tell from indentation.
    return ["|-"] + [(indent + line.rstrip()) if line.strip() else ""
                     for line in text.strip("\n").split("\n")]


def _blockable(text: str) -> bool:
    # A literal block takes its indentation from its first line, so that line must not
    # start with a blank; tabs and a trailing blank would not survive either.
    body = text.strip("\n")
    return "\n" in body and not body[:1].isspace() and "\t" not in body


def _item(key: str, value: Data, lead: str, indent: str, out: List[str]) -> None:
    """``key: value`` whose first line starts with ``lead``; nested lines at ``indent``."""
    k = json.dumps(key) if not key.replace("_", "").isalnum() else key
    if isinstance(value, Mapping):
        if not value:
            out.append(f"{lead}{k}: {{}}")
            return
        out.append(f"{lead}{k}:")
        for kk, vv in value.items():
            _item(kk, vv, indent + "  ", indent + "  ", out)
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append(f"{lead}{k}: []")
            return
        out.append(f"{lead}{k}:")
        _list(value, indent, out)
    elif isinstance(value, str) and _blockable(value):
        lines = _block(value, indent + "  ")
        out.append(f"{lead}{k}: {lines[0]}")
        out.extend(lines[1:])
    else:
        out.append(f"{lead}{k}: {_scalar(value)}")


def _list(items: Sequence[Data], indent: str, out: List[str]) -> None:
    for v in items:
        if isinstance(v, Mapping) and v:
            first = True
            for kk, vv in v.items():
                _item(kk, vv, indent + ("- " if first else "  "), indent + "  ", out)
                first = False
        elif isinstance(v, (list, tuple)) and v:
            out.append(f"{indent}-")
            _list(v, indent + "  ", out)
        elif isinstance(v, Mapping):
            out.append(f"{indent}- {{}}")
        elif isinstance(v, (list, tuple)):
            out.append(f"{indent}- []")
        else:
            out.append(f"{indent}- {_scalar(v)}")


def dump(data: Mapping[str, Data]) -> str:
    """``data`` as a YAML document."""
    out: List[str] = []
    for k, v in data.items():
        _item(k, v, "", "", out)
    return "\n".join(out) + "\n"
