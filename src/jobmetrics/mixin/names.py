"""The full name of every family a mixin queries, for one configuration.

Names follow SPEC section 1: the library's families under ``namespace_subsystem_`` and
the exporter's under ``<exporter_namespace>_task_``. ``task_retries_total`` is in the
contract before every integration emits it; queries on it return nothing until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

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
        p, e = config.prefix, config.exporter_prefix
        return cls(
            http_inflight=p + "http_inflight_requests",
            http_requests=p + "http_request_total",
            http_duration=p + "http_request_duration_seconds",
            tasks=p + "task_total",
            task_duration=p + "task_process_time_seconds",
            success_rate=p + "task_success_rate",
            running=p + "running_task",
            pending=p + "pending_task",
            queue_size=p + "queue_size",
            queue_wait=p + "queue_wait_seconds",
            retries=p + "task_retries_total",
            info=p + "info",
            batch_last_success=p + "batch_last_success_timestamp_seconds",
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
