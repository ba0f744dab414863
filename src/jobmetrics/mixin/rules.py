"""Recording rules (``rules.yaml``), named ``level:metric:operations``.

``level`` lists the labels kept (the configured ``group_by`` labels, then ``type``,
``queue`` or ``operation``); ``metric`` is the family name, ``_total`` dropped from rated
counters; ``operations`` says what was done, newest first (``rate5m``, ``ratio_rate5m``,
``mean5m``, ``quantile5m``). Everything is aggregated across instances, so dashboards
and alerts over many instances stay cheap.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .config import MixinConfig
from .names import Names
from .promql import by, duration_mean, duration_quantile, vec
from .yamlout import Data

__all__ = ["QUANTILES", "recording_rules", "rules"]

QUANTILES = (0.5, 0.9, 0.99)
WINDOW = "5m"


def _base(counter: str) -> str:
    return counter[: -len("_total")] if counter.endswith("_total") else counter


def _level(labels: Sequence[str]) -> str:
    return "_".join(labels)


def rules(config: MixinConfig) -> List[Tuple[str, str, Dict[str, str]]]:
    """``(record, expr, labels)`` of every recording rule for ``config``."""
    n, s, g = Names.of(config), config.selector, list(config.group_by)
    w = WINDOW
    out: List[Tuple[str, str, Dict[str, str]]] = []

    def add(labels: Sequence[str], metric: str, op: str, expr: str,
            extra: Dict[str, str]) -> None:
        out.append((f"{_level(labels)}:{metric}:{op}", expr, extra))

    gt, gts = [*g, "type"], [*g, "type", "status"]
    fail = vec(n.tasks, 'status="fail"', s)
    finished = vec(n.tasks, 'status=~"success|fail"', s)
    errors = vec(n.http_requests, 'code=~"5.."', s)
    add(gts, _base(n.tasks), f"rate{w}",
        f"sum by ({by(gts)}) (rate({vec(n.tasks, s)}[{w}]))", {})
    add(gt, _base(n.tasks) + "_fail_per_finished", f"ratio_rate{w}",
        f"sum by ({by(gt)}) (rate({fail}[{w}]))\n/\n"
        f"sum by ({by(gt)}) (rate({finished}[{w}]))",
        {})
    add(gt, _base(n.retries), f"rate{w}",
        f"sum by ({by(gt)}) (rate({vec(n.retries, s)}[{w}]))", {})
    add(gt, n.running, "sum", f"sum by ({by(gt)}) ({vec(n.running, s)})", {})
    add(gt, n.pending, "sum", f"sum by ({by(gt)}) ({vec(n.pending, s)})", {})

    gop = [*g, "method", "operation", "code"]
    add(gop, _base(n.http_requests), f"rate{w}",
        f"sum by ({by(gop)}) (rate({vec(n.http_requests, s)}[{w}]))", {})
    go = [*g, "operation"]
    add(go, _base(n.http_requests) + "_5xx_per_request", f"ratio_rate{w}",
        f"sum by ({by(go)}) (rate({errors}[{w}]))\n/\n"
        f"sum by ({by(go)}) (rate({vec(n.http_requests, s)}[{w}]))", {})

    gq = [*g, "queue"]
    for family, labels in ((n.task_duration, gt), (n.http_duration, go),
                           (n.queue_wait, gq)):
        add(labels, family, f"mean{w}", duration_mean(family, [s], labels, w), {})
        for q in QUANTILES:
            add([*labels, "quantile"], family, f"quantile{w}",
                duration_quantile(q, family, [s], labels, w), {"quantile": f"{q:g}"})

    # One exporter per store is usual, two for high availability: max, not sum.
    gx = [*g, "type", "queue"]
    add(gx, n.exp_queue_size, "max", f"max by ({by(gx)}) ({vec(n.exp_queue_size, s)})", {})
    add(gx, n.exp_queue_latency, "max",
        f"max by ({by(gx)}) ({vec(n.exp_queue_latency, s)})", {})
    return out


def recording_rules(config: MixinConfig) -> Dict[str, Data]:
    """The content of ``rules.yaml``: a Prometheus rule file with one group."""
    items: List[Data] = []
    for record, expr, labels in rules(config):
        rule: Dict[str, Data] = {"record": record, "expr": expr}
        if labels:
            rule["labels"] = dict(labels)
        items.append(rule)
    return {"groups": [{"name": config.prefix + "rules", "rules": items}]}
