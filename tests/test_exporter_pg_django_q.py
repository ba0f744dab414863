"""The `django-q2` layout: tasks from ``async_task`` through the ORM broker, run by a Cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics.exporter import PostgresExporter
from pg_support import PostgresServer
from promcheck import promtool_check, samples, scrape

pytest.importorskip("django_q")

APP = Path(__file__).with_name("django_q_app.py")


def step(url: str, name: str) -> str:
    proc = subprocess.run([sys.executable, str(APP), url, name], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def family(got: Dict[Any, float], name: str) -> Dict[Any, float]:
    return {k[1]: v for k, v in got.items() if k[0] == name}


def test_async_task_through_the_orm_broker(
    pg_server: PostgresServer, registry: CollectorRegistry
) -> None:
    url = pg_server.url(pg_server.new_database("django_q_layout"))
    step(url, "migrate")
    PostgresExporter(url, layout="django-q2", registry=registry)
    scrape(registry)  # the tail starts here

    step(url, "enqueue")
    start = time.time()
    text = scrape(registry)
    got = samples(text)
    assert family(got, "harbor_task_queue_size") == {(("queue", "jobs"),): 4}
    assert family(got, "harbor_task_concurrency") == {(("queue", "jobs"),): 0}
    assert 0 <= got[("harbor_task_queue_latency", (("queue", "jobs"),))] < 30 + time.time() - start
    assert not any(name == "harbor_task_scheduled" for name, _ in got)
    promtool_check(text)

    assert step(url, "work") == "4"
    got = samples(scrape(registry))
    assert {k: v for k, v in family(got, "harbor_task_finished_total").items() if v} == {
        (("queue", "jobs"), ("status", "success")): 3,
        (("queue", "jobs"), ("status", "fail")): 1,
    }
    assert family(got, "harbor_task_queue_size") == {(("queue", "jobs"),): 0}
    assert family(got, "harbor_task_queue_latency") == {(("queue", "jobs"),): 0}

    # A task the pusher took (locked until now + retry) is in flight, not waiting.
    step(url, "enqueue")
    assert step(url, "take") == "1"
    got = samples(scrape(registry))
    assert family(got, "harbor_task_queue_size") == {(("queue", "jobs"),): 3}
    assert family(got, "harbor_task_concurrency") == {(("queue", "jobs"),): 1}
