"""The full name of every family a mixin queries, for one configuration.

The library's names come from its family table (``families.py``); the exporter's are
under ``<exporter_namespace>_task_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from ..families import FamilyTable
from ..settings import Settings
from .config import MixinConfig

__all__ = ["Names"]


@dataclass(frozen=True)
class Names:
    """Family names (as exposed, counters with ``_total``) for one :class:`MixinConfig`."""

    http_inflight: str
    http_requests: str
    http_duration: str
    tasks: str
    task_duration: str
    success_rate: str
    running: str
    pending: str
    queue_size: str
    queue_wait: str
    retries: str
    info: str
    batch_last_success: str
    exp_queue_size: str
    exp_queue_latency: str
    exp_concurrency: str
    exp_scheduled: str
    exp_scheduled_total: str
    exp_finished: str
    exp_up: str
    exp_read_duration: str
    exp_read_errors: str
    exp_last_success: str

    @classmethod
    def of(cls, config: MixinConfig) -> Names:
        """The names for ``config``."""
        e = config.exporter_prefix
        # The library's names from its own family table, as exposed.
        table = FamilyTable(Settings(namespace=config.namespace, subsystem=config.subsystem))

        def shown(key: str) -> str:
            kind = table.kind(key)
            suffix = "_total" if kind == "counter" else "_info" if kind == "info" else ""
            return table.names[key] + suffix

        return cls(
            http_inflight=shown("inflight"),
            http_requests=shown("requests"),
            http_duration=shown("request_duration"),
            tasks=shown("tasks"),
            task_duration=shown("process_time"),
            success_rate=shown("success_rate"),
            running=shown("running"),
            pending=shown("pending"),
            queue_size=shown("queue_size"),
            queue_wait=shown("queue_wait"),
            retries=shown("retries"),
            info=shown("info"),
            batch_last_success=shown("batch_success"),
            exp_queue_size=e + "queue_size",
            exp_queue_latency=e + "queue_latency",
            exp_concurrency=e + "concurrency",
            exp_scheduled=e + "scheduled",
            exp_scheduled_total=e + "scheduled_total",
            exp_finished=e + "finished_total",
            exp_up=e + "exporter_up",
            exp_read_duration=e + "exporter_read_duration_seconds",
            exp_read_errors=e + "exporter_read_errors_total",
            exp_last_success=e + "exporter_last_success_timestamp_seconds",
        )

    def all(self) -> Dict[str, str]:
        """``field -> family name`` for every family."""
        return dict(vars(self))
