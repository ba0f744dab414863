"""An APScheduler whose every job run is counted: ``python examples/apscheduler_jobs.py``.

Three jobs run once each (one fails, one is late past its grace time), then the scheduler
stops and the script prints what a scrape shows. In a long-running service, give
``port=8001`` (or set ``JOBMETRICS_PORT``) to serve ``/metrics``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import generate_latest

import jobmetrics
import jobmetrics.apscheduler


def rotate_logs() -> None:
    pass


def sync_mirror() -> None:
    raise ConnectionError("mirror unreachable")


def main() -> None:
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    jobmetrics.apscheduler.instrument(scheduler)
    done = threading.Semaphore(0)
    scheduler.add_listener(lambda event: done.release(),
                           EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    scheduler.start()
    now = datetime.now(timezone.utc)
    scheduler.add_job(rotate_logs, "date", run_date=now)
    scheduler.add_job(sync_mirror, "date", run_date=now)
    scheduler.add_job(rotate_logs, "date", run_date=now - timedelta(minutes=5),
                      misfire_grace_time=60, name="nightly_report")
    for _ in range(3):
        done.acquire(timeout=10)
    scheduler.shutdown()


if __name__ == "__main__":
    main()
    text = generate_latest(jobmetrics.default_metrics().registry).decode()
    print("\n".join(line for line in text.splitlines()
                    if line.startswith(("harbor_jobservice_task_total",
                                        "harbor_jobservice_queue_wait_seconds_count"))))
