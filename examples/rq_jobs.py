"""RQ jobs run by ``rq worker --worker-class jobmetrics.rq.Worker``: every job counted,
though each runs in a work horse forked for it.

Run it as docs/rq.md says (a Redis server on localhost:6379):

    cd examples
    JOBMETRICS_PORT=9100 rq worker --worker-class jobmetrics.rq.Worker default
    python rq_jobs.py 20             # enqueues 20 jobs, from another shell
    curl localhost:9100/metrics
"""

from __future__ import annotations

import os
import random
import sys
import time


def replicate(artifact: str) -> str:
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < 0.1:
        raise RuntimeError(f"registry refused {artifact}")
    return artifact


def garbage_collect() -> int:
    time.sleep(random.uniform(0.2, 0.5))
    return random.randint(0, 100)


if __name__ == "__main__":
    from redis import Redis
    from rq import Queue, Retry

    queue = Queue("default", connection=Redis.from_url(
        os.environ.get("RQ_REDIS_URL", "redis://localhost:6379/0")))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for i in range(n):
        queue.enqueue("rq_jobs.replicate", f"library/app:{i}", retry=Retry(max=2))
    queue.enqueue("rq_jobs.garbage_collect")
    print(f"enqueued {n} replications and one garbage collection")
