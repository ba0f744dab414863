"""The Redis exporter over RQ queues, start to finish, printing one scrape.

    python examples/exporter_rq.py                       # starts a throwaway redis-server
    python examples/exporter_rq.py --redis-url redis://127.0.0.1:6379/0

Enqueues a few RQ jobs (no worker runs them), then prints what Prometheus would scrape
from ``jobmetrics-exporter --layout rq``. Needs ``pip install 'jobmetrics[redis]' rq``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import timedelta
from typing import Optional, Tuple

import redis
from prometheus_client import CollectorRegistry, generate_latest
from rq import Queue

from jobmetrics.exporter import RedisExporter


def throwaway_redis(workdir: str) -> Tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: give --redis-url or install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(250):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return proc, url


def main(redis_url: Optional[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if redis_url is None:
            server, redis_url = throwaway_redis(tmp)
        try:
            r = redis.Redis.from_url(redis_url)
            emails = Queue("example-emails", connection=r)
            for _ in range(3):
                emails.enqueue("os.getcwd")
            emails.enqueue_in(timedelta(hours=1), "os.getcwd")
            Queue("example-reports", connection=r).enqueue("os.getcwd")

            registry = CollectorRegistry()
            exporter = RedisExporter(
                redis_url, layout="rq", queues=["example-emails", "example-reports"],
                registry=registry,
            )
            print(generate_latest(registry).decode(), end="")
            exporter.close()
            emails.empty()
            Queue("example-reports", connection=r).empty()
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None)
    main(parser.parse_args().redis_url)
