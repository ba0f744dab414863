"""Dramatiq actors with ``JobMetricsMiddleware``: one /metrics for every worker process.

Run it as docs/dramatiq.md says (a Redis server on localhost:6379):

    cd examples
    JOBMETRICS_PORT=9100 dramatiq dramatiq_app --processes 2 --threads 4
    python dramatiq_app.py 20        # sends 20 messages, from another shell
    curl localhost:9100/metrics
"""

from __future__ import annotations

import os
import random
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from jobmetrics.dramatiq import JobMetricsMiddleware

broker = RedisBroker(url=os.environ.get("DRAMATIQ_REDIS_URL", "redis://localhost:6379/0"))
broker.add_middleware(JobMetricsMiddleware())  # the default JobMetrics; $JOBMETRICS_PORT
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=2, min_backoff=100, max_backoff=500)
def replicate(artifact: str) -> None:
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < 0.1:
        raise RuntimeError(f"registry refused {artifact}")


@dramatiq.actor(max_retries=0)
def garbage_collect() -> None:
    time.sleep(random.uniform(0.2, 0.5))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for i in range(n):
        replicate.send(f"library/app:{i}")
    garbage_collect.send()
    print(f"sent {n} replications and one garbage collection")
