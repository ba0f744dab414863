"""A cron-style batch job that pushes its metrics to a Pushgateway when it ends.

    # crontab: every night at 02:00
    0 2 * * * /srv/venv/bin/python /srv/batch_job.py --gateway pushgateway:9091

Prometheus scrapes the Pushgateway (with `honor_labels: true`) and can alert with
    time() - harbor_jobservice_batch_last_success_timestamp_seconds{job="nightly_gc"} > 90000
"""

from __future__ import annotations

import argparse
import socket

from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics

# A registry of its own: only this job's families are pushed, nothing process-wide.
m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)


@m.task("collect_blobs")
def collect_blobs(repository: str) -> int:
    return len(repository)  # stands in for the real work


def main() -> None:
    parser = argparse.ArgumentParser(description="nightly garbage collection")
    parser.add_argument("--gateway", default="localhost:9091")
    args = parser.parse_args()
    with m.push_on_exit(args.gateway, job="nightly_gc",
                        grouping_key={"instance": socket.gethostname()}):
        for repo in ("library/nginx", "library/redis", "team/app"):
            collect_blobs(repo)
    print("done; metrics pushed to", args.gateway)


if __name__ == "__main__":
    main()
