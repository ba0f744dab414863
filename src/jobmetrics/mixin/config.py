"""What a generated mixin is for: the metric prefixes, the label selector and thresholds."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Tuple

__all__ = ["MixinConfig"]

_NAME_PART = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# One PromQL label matcher: name, operator, double-quoted value (escapes allowed).
_MATCHER = re.compile(r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')
# Labels every query already groups or filters by, so they cannot be asked for again.
_RESERVED = frozenset({"type", "queue", "status", "le", "quantile", "instance", "__name__"})


def _name_part(arg: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a str, got {type(value).__name__}")
    if value and (not _NAME_PART.match(value) or value.startswith("__")):
        raise ValueError(
            f"{arg}={value!r} is not a valid Prometheus metric name part: use letters, "
            "digits and underscores, not starting with a digit or '__'"
        )
    return value


def _positive(arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")
    return float(value)


def check_selector(arg: str, value: object) -> str:
    """Comma-separated PromQL label matchers such as ``namespace="jobs",cluster=~"eu.*"``."""
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a str, got {type(value).__name__}")
    text = value.strip().strip(",")
    pos = 0
    while pos < len(text):
        match = _MATCHER.match(text, pos)
        if match is None:
            raise ValueError(
                f"{arg}={value!r} is not a list of label matchers such as "
                "'namespace=\"jobs\",cluster=~\"eu-.*\"'"
            )
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"{arg}={value!r}: matchers must be separated by commas")
            pos += 1
    return text


@dataclass(frozen=True)
class MixinConfig:
    """The configuration a mixin is generated for.

    Args:
        namespace, subsystem: the library's prefix, as given to ``JobMetrics`` (default
            ``harbor_jobservice_``).
        exporter_namespace: the exporter's ``--namespace`` (default ``harbor``, giving
            ``harbor_task_*``; ``""`` for none).
        selector: label matchers added to every selector, e.g. ``'namespace="jobs"'``.
        group_by: the labels alerts and recording rules keep besides ``type``/``queue``
            (``job`` by default; add ``cluster`` or ``namespace`` where one Prometheus sees
            several).
        alert_prefix: the CamelCase prefix of every alert name.
        fail_ratio: alert when more than this share of finished tasks (``fail`` among
            ``success`` + ``fail``) fail over 10 minutes.
        stuck_seconds: alert when tasks of a type are running but none has finished for
            this long.
        queue_backlog: alert when more jobs than this wait in one queue for 15 minutes.
        queue_latency_seconds: alert when the oldest waiting job (or the p99 time an item
            waits in an instrumented queue) is older than this for 10 minutes.
        slow_task_seconds: alert when the p99 task run time is above this for 15 minutes.
        batch_max_age_seconds: alert when a pushed batch job last succeeded longer ago
            than this.
        runbook_url: the address of docs/alerts.md as you publish it; each alert gets a
            ``runbook_url`` annotation pointing at its section. Left out when empty.
    """

    namespace: str = "harbor"
    subsystem: str = "jobservice"
    exporter_namespace: str = "harbor"
    selector: str = ""
    group_by: Tuple[str, ...] = ("job",)
    alert_prefix: str = "JobMetrics"
    fail_ratio: float = 0.1
    stuck_seconds: float = 1800.0
    queue_backlog: float = 100.0
    queue_latency_seconds: float = 300.0
    slow_task_seconds: float = 600.0
    batch_max_age_seconds: float = 90000.0
    runbook_url: str = ""

    def __post_init__(self) -> None:
        _name_part("namespace", self.namespace)
        _name_part("subsystem", self.subsystem)
        if not self.namespace and not self.subsystem:
            raise ValueError("namespace and subsystem cannot both be empty")
        _name_part("exporter_namespace", self.exporter_namespace)
        object.__setattr__(self, "selector", check_selector("selector", self.selector))
        if isinstance(self.group_by, str) or not isinstance(self.group_by, (tuple, list)):
            raise TypeError(f"group_by must be a tuple of label names, got "
                            f"{type(self.group_by).__name__}")
        for label in self.group_by:
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f"group_by: {label!r} is not a label name")
            if label in _RESERVED:
                raise ValueError(f"group_by: {label!r} is already used by the queries; "
                                 "leave it out")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by names a label twice: {list(self.group_by)!r}")
        object.__setattr__(self, "group_by", tuple(self.group_by))
        if not isinstance(self.alert_prefix, str) or not re.match(
            r"^[A-Z][A-Za-z0-9]*$", self.alert_prefix
        ):
            raise ValueError(f"alert_prefix={self.alert_prefix!r} must be CamelCase letters "
                             "and digits, starting with a capital letter")
        for arg in ("fail_ratio", "stuck_seconds", "queue_backlog", "queue_latency_seconds",
                    "slow_task_seconds", "batch_max_age_seconds"):
            object.__setattr__(self, arg, _positive(arg, getattr(self, arg)))
        if self.fail_ratio >= 1:
            raise ValueError(f"fail_ratio must be in (0, 1), got {self.fail_ratio!r}")
        if not isinstance(self.runbook_url, str):
            raise TypeError(f"runbook_url must be a str, got {type(self.runbook_url).__name__}")

    @property
    def prefix(self) -> str:
        """The library's prefix, ``namespace_subsystem_``."""
        return "".join(p + "_" for p in (self.namespace, self.subsystem) if p)

    @property
    def exporter_prefix(self) -> str:
        """The exporter's prefix, ``<exporter_namespace>_task_``."""
        return f"{self.exporter_namespace}_task_" if self.exporter_namespace else "task_"
