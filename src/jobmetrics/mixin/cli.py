"""``jobmetrics mixin``: the command line of :func:`jobmetrics.mixin.write`."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from .config import MixinConfig

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``mixin`` subcommand to the ``jobmetrics`` subparsers ``sub``."""
    d = MixinConfig()
    p = sub.add_parser(
        "mixin", help="write Prometheus alerts, recording rules and Grafana dashboards",
        description="Write alerts.yaml, rules.yaml, dashboards/*.json and mixin.libsonnet "
                    "for the given metric prefixes (see docs/alerts.md).")
    p.error = _one_line_error
    p.add_argument("--out", required=True, help="directory to write to (made if missing)")
    p.add_argument("--namespace", default=d.namespace,
                   help=f"the library's namespace (default {d.namespace})")
    p.add_argument("--subsystem", default=d.subsystem,
                   help=f"the library's subsystem (default {d.subsystem})")
    p.add_argument("--exporter-namespace", default=d.exporter_namespace,
                   help=f"the exporter's --namespace (default {d.exporter_namespace})")
    p.add_argument("--selector", default=d.selector,
                   help='label matchers added to every query, e.g. \'namespace="jobs"\'')
    p.add_argument("--group-by", default=",".join(d.group_by),
                   help="labels the alerts and rules keep, comma-separated (default job)")
    p.add_argument("--alert-prefix", default=d.alert_prefix,
                   help=f"prefix of every alert name (default {d.alert_prefix})")
    p.add_argument("--fail-ratio", type=float, default=d.fail_ratio,
                   help=f"failed share of tasks that alerts (default {d.fail_ratio:g})")
    p.add_argument("--stuck-seconds", type=float, default=d.stuck_seconds,
                   help=f"running with no finish for this long alerts (default "
                        f"{d.stuck_seconds:g})")
    p.add_argument("--queue-backlog", type=float, default=d.queue_backlog,
                   help=f"waiting jobs in one queue that alert (default {d.queue_backlog:g})")
    p.add_argument("--queue-latency-seconds", type=float, default=d.queue_latency_seconds,
                   help=f"queue wait that alerts (default {d.queue_latency_seconds:g})")
    p.add_argument("--slow-task-seconds", type=float, default=d.slow_task_seconds,
                   help=f"p99 run time that alerts (default {d.slow_task_seconds:g})")
    p.add_argument("--batch-max-age-seconds", type=float, default=d.batch_max_age_seconds,
                   help=f"age of a batch job's last success that alerts (default "
                        f"{d.batch_max_age_seconds:g})")
    p.add_argument("--runbook-url", default=d.runbook_url,
                   help="where docs/alerts.md is published: adds runbook_url annotations")


def _one_line_error(message: str) -> NoReturn:
    # argparse prints its usage too; a command-line error here is one line, status 2.
    print(f"jobmetrics mixin: error: {message}", file=sys.stderr)
    sys.exit(2)


def run(args: argparse.Namespace) -> int:
    """Write the mixin as ``args`` say; one line on stderr and status 2 on an error."""
    from . import write

    try:
        config = MixinConfig(
            namespace=args.namespace, subsystem=args.subsystem,
            exporter_namespace=args.exporter_namespace, selector=args.selector,
            group_by=tuple(x.strip() for x in args.group_by.split(",") if x.strip()),
            alert_prefix=args.alert_prefix, fail_ratio=args.fail_ratio,
            stuck_seconds=args.stuck_seconds, queue_backlog=args.queue_backlog,
            queue_latency_seconds=args.queue_latency_seconds,
            slow_task_seconds=args.slow_task_seconds,
            batch_max_age_seconds=args.batch_max_age_seconds, runbook_url=args.runbook_url)
        paths = write(config, args.out)
    except (ValueError, TypeError) as exc:
        print(f"jobmetrics mixin: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"jobmetrics mixin: error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
