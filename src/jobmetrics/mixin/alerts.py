"""Alerting rules (``alerts.yaml``): one group, each alert with a runbook in docs/alerts.md.

Task failures come from the ``task_total`` counters, rated and aggregated over every
instance: the ``task_success_rate`` gauge is per instance, over its own sliding window,
and NaN when nothing finished, so it cannot be summed or compared across instances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from .config import MixinConfig
from .names import Names
from .promql import by, duration_quantile, vec
from .yamlout import Data

__all__ = ["Alert", "alert_rules", "alerts", "duration"]

#: The most failures below which a high failed share does not alert: one failure out
#: of two tasks is 50 % but rarely a reason to wake anyone.
MIN_FAILURES = 3


@dataclass(frozen=True)
class Alert:
    """One alerting rule before it is written out."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: Optional[str] = None


def duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``: ``1h``, ``30m``, ``90s``, ``1500ms``."""
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _queue_name() -> str:
    # The exporter labels by `type` (Harbor's layout) or `queue` (RQ, Celery).
    return "{{ with $labels.queue }}{{ . }}{{ else }}{{ $labels.type }}{{ end }}"


def alerts(config: MixinConfig) -> List[Alert]:
    """Every alert for ``config``, in the order of docs/alerts.md."""
    n, s, g = Names.of(config), config.selector, list(config.group_by)
    p = config.alert_prefix
    on = by(dict.fromkeys(["job", *g]))
    gt = by([*g, "type"])
    gi = by([*g, "instance", "type"])
    pct = f"{config.fail_ratio * 100:g}%"
    stuck = duration(config.stuck_seconds)
    fail = vec(n.tasks, 'status="fail"', s)
    finished = vec(n.tasks, 'status=~"success|fail"', s)
    return [
        Alert(
            f"{p}TasksFailing",
            f"(\n  sum by ({gt}) (rate({fail}[10m]))\n  /\n"
            f"  sum by ({gt}) (rate({finished}[10m]))\n) > {config.fail_ratio:g}\n"
            f"and\nsum by ({gt}) (increase({fail}[10m])) >= {MIN_FAILURES}",
            "warning",
            "Many tasks are failing.",
            f"{{{{ $value | humanizePercentage }}}} of the {{{{ $labels.type }}}} tasks of "
            f"{{{{ $labels.job }}}} failed over the last 10 minutes (more than {pct}).",
            "5m",
        ),
        Alert(
            f"{p}TasksStuck",
            f"sum by ({gi}) ({vec(n.running, s)}) > 0\nunless\n"
            f"sum by ({gi}) (increase({vec(n.tasks, s)}[{stuck}])) > 0",
            "warning",
            "Tasks are running but none finishes.",
            f"{{{{ $value }}}} {{{{ $labels.type }}}} tasks are running on "
            f"{{{{ $labels.instance }}}} ({{{{ $labels.job }}}}) and none has finished "
            f"for {stuck}.",
            "5m",
        ),
        Alert(
            f"{p}QueueBacklog",
            f"max by ({by([*g, 'type', 'queue'])}) ({vec(n.exp_queue_size, s)}) "
            f"> {config.queue_backlog:g}\nor\n"
            f"max by ({by([*g, 'instance', 'queue'])}) ({vec(n.queue_size, s)}) "
            f"> {config.queue_backlog:g}",
            "warning",
            "Jobs are piling up in a queue.",
            f"{{{{ $value }}}} jobs wait in queue {_queue_name()} of {{{{ $labels.job }}}} "
            f"(more than {config.queue_backlog:g} for 15 minutes).",
            "15m",
        ),
        Alert(
            f"{p}QueueLatencyHigh",
            f"max by ({by([*g, 'type', 'queue'])}) ({vec(n.exp_queue_latency, s)}) "
            f"> {config.queue_latency_seconds:g}\nor\n(\n"
            + duration_quantile(0.99, n.queue_wait, [s], [*g, "queue"], "10m")
            + f"\n) > {config.queue_latency_seconds:g}",
            "warning",
            "Jobs wait too long in a queue.",
            f"Jobs in queue {_queue_name()} of {{{{ $labels.job }}}} wait "
            f"{{{{ $value | humanizeDuration }}}} (more than "
            f"{duration(config.queue_latency_seconds)}).",
            "10m",
        ),
        Alert(
            f"{p}TasksSlow",
            "(\n" + duration_quantile(0.99, n.task_duration, [s], [*g, "type"], "10m")
            + f"\n) > {config.slow_task_seconds:g}",
            "warning",
            "Tasks take longer than usual.",
            f"The 99th percentile run time of {{{{ $labels.type }}}} tasks of "
            f"{{{{ $labels.job }}}} is {{{{ $value | humanizeDuration }}}} (more than "
            f"{duration(config.slow_task_seconds)}).",
            "15m",
        ),
        Alert(
            f"{p}ExporterReadFailing",
            f"{vec(n.exp_up, s)} == 0",
            "warning",
            "The exporter cannot read the job store.",
            "The exporter {{ $labels.instance }} ({{ $labels.job }}) has failed to read its "
            "store for 5 minutes: queue sizes and latencies are missing.",
            "5m",
        ),
        Alert(
            f"{p}BatchJobNotSucceeding",
            f"time() - {vec(n.batch_last_success, s)} > {config.batch_max_age_seconds:g}",
            "warning",
            "A batch job has not succeeded for too long.",
            "The batch job {{ $labels.job }} last succeeded {{ $value | humanizeDuration }} "
            f"ago (more than {duration(config.batch_max_age_seconds)}).",
        ),
        Alert(
            f"{p}TargetDown",
            f"{vec('up', s)} == 0\nand on ({on})\n(\n"
            f"  group by ({on}) (present_over_time({vec(n.info, s)}[1d]))\n  or\n"
            f"  group by ({on}) (present_over_time({vec(n.exp_up, s)}[1d]))\n)",
            "critical",
            "A job service or exporter cannot be scraped.",
            "Prometheus has failed to scrape {{ $labels.instance }} ({{ $labels.job }}) "
            "for 5 minutes.",
            "5m",
        ),
    ]


def alert_rules(config: MixinConfig) -> Dict[str, Data]:
    """The content of ``alerts.yaml``: a Prometheus rule file with one group."""
    rules: List[Data] = []
    for a in alerts(config):
        annotations: Dict[str, Data] = {"summary": a.summary, "description": a.description}
        if config.runbook_url:
            annotations["runbook_url"] = f"{config.runbook_url}#{a.name.lower()}"
        rule: Dict[str, Data] = {"alert": a.name, "expr": a.expr}
        if a.for_:
            rule["for"] = a.for_
        rule["labels"] = {"severity": a.severity}
        rule["annotations"] = annotations
        rules.append(rule)
    return {"groups": [{"name": config.prefix + "alerts", "rules": rules}]}
