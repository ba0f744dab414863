"""A Celery job service instrumented with one line: every task of every pool counted.

Run it as docs/celery.md says (a Redis server on localhost:6379):

    cd examples
    JOBMETRICS_PORT=9100 celery -A celery_worker worker --pool prefork --concurrency 4
    python celery_worker.py 20       # sends 20 jobs, from another shell
    curl localhost:9100/metrics

No multi-process directory to set up: the prefork worker makes its own as it starts.
"""

from __future__ import annotations

import os
import random
import sys
import time

from celery import Celery

import jobmetrics.celery

# The main name is the module's: tasks sent by `python celery_worker.py` get the names
# the worker (which imports it as celery_worker) knows them by.
app = Celery("celery_worker",
             broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
jobmetrics.celery.instrument(app)  # the default JobMetrics; /metrics on $JOBMETRICS_PORT


# A refused replication is retried (twice at most): each attempt that fails is a `fail`
# and one more in task_retries_total.
@app.task(autoretry_for=(RuntimeError,), max_retries=2, default_retry_delay=0)
def replicate(artifact: str) -> str:
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < 0.1:
        raise RuntimeError(f"registry refused {artifact}")
    return artifact


@app.task
def garbage_collect() -> int:
    time.sleep(random.uniform(0.2, 0.5))
    return random.randint(0, 100)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for i in range(n):
        replicate.delay(f"library/app:{i}")
    garbage_collect.delay()
    print(f"sent {n} replications and one garbage collection")
