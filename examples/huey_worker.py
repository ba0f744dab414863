"""A Huey app whose every task is counted, by one line and no decorator.

Run the consumer (two worker processes, one ``/metrics`` for both), then send tasks::

    JOBMETRICS_PORT=8001 huey_consumer huey_worker.huey -k process -w 2
    python huey_worker.py 6        # 6 replications (odd ones fail once) and a GC
    curl -s localhost:8001/metrics | grep harbor_jobservice_task_total

The Redis URL is ``$HUEY_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from huey import RedisHuey

import jobmetrics.huey

huey = RedisHuey("registry", url=os.environ.get("HUEY_REDIS_URL", "redis://127.0.0.1:6379/0"))
jobmetrics.huey.instrument(huey)     # the consumer serves /metrics on $JOBMETRICS_PORT


@huey.task(retries=2, context=True)
def replicate(repository: str, k: int, task: Any = None) -> str:
    """Copy a repository; odd ones find the remote busy on their first attempt."""
    if k % 2 and task is not None and task.retries == 2:
        raise ConnectionError(f"{repository}: remote registry busy")
    time.sleep(0.05)
    return repository


@huey.task()
def garbage_collect() -> int:
    """Delete untagged blobs."""
    time.sleep(0.05)
    return 0


def send(n: int) -> None:
    """Send ``n`` replications and a garbage collection."""
    for k in range(n):
        replicate(f"library/app-{k}", k)
    garbage_collect()
    print(f"sent {n} replications and a garbage collection")


if __name__ == "__main__":
    # Huey names a task after its module: send them from ``huey_worker``, as the consumer
    # imported it, not from ``__main__``.
    import huey_worker

    huey_worker.send(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
