"""A Celery job service whose prefork worker serves /metrics for all its children.

Run it as docs/celery.md says (a Redis server on localhost:6379):

    cd examples
    rm -rf /tmp/jobs-metrics && mkdir /tmp/jobs-metrics
    export PROMETHEUS_MULTIPROC_DIR=/tmp/jobs-metrics
    celery -A celery_app worker --pool prefork --concurrency 4
    python celery_app.py 20          # sends 20 jobs, from another shell
    curl localhost:9100/metrics
"""

from __future__ import annotations

import os
import random
import sys
import time

from celery import Celery
from celery.signals import worker_init

from jobmetrics import JobMetrics
from jobmetrics.multiprocess import setup_celery

# The main name is the module's: tasks sent by `python celery_app.py` get the names
# the worker (which imports it as celery_app) knows them by.
app = Celery("celery_app", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
m = JobMetrics()  # multi-process mode: PROMETHEUS_MULTIPROC_DIR, exported before the worker
setup_celery()    # children fold their file in as they exit; warns if the mode is off


@worker_init.connect
def serve_metrics(**_: object) -> None:
    """The worker's main process serves /metrics; its children only record."""
    m.start_http_server(int(os.environ.get("METRICS_PORT", "9100")), addr="127.0.0.1")


@app.task
@m.task("replication")  # under @app.task, so the worker runs the instrumented function
def replicate(artifact: str) -> str:
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < 0.1:
        raise RuntimeError(f"registry refused {artifact}")
    return artifact


@app.task
@m.task("gc")
def garbage_collect() -> int:
    time.sleep(random.uniform(0.2, 0.5))
    return random.randint(0, 100)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for i in range(n):
        replicate.delay(f"library/app:{i}")
    garbage_collect.delay()
    print(f"sent {n} replications and one garbage collection")
