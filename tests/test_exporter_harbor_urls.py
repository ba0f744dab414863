"""Harbor's own Redis URLs (what `prepare` writes into `_REDIS_URL_*`), Sentinel, key prefix."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from prometheus_client import CollectorRegistry

from exporter_support import RedisSentinel, RedisServer, enqueue
from jobmetrics.exporter import RedisExporter
from jobmetrics.exporter.cli import ENV
from promcheck import promtool_check, samples, scrape, value
from servers import free_port, wait_http
from test_exporter_cli import env, get, serve, stop

NS = "{harbor_job_service_namespace}"
PASSWORD = "s3cr@t/pw"  # Harbor's prepare percent-encodes it: quote(password, safe='')
QUOTED = "s3cr%40t%2Fpw"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that needs a password, as an external Redis for Harbor does."""
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def exporter_cmd(url: str, port: int, *extra: str) -> List[str]:
    return [sys.executable, "-m", "jobmetrics.exporter", "--redis-url", url, "--port",
            str(port), "--addr", "127.0.0.1", *extra]


def test_harbors_jobservice_url_reads_db_2(secured: RedisServer) -> None:
    # make/photon/prepare/utils/configs.py: get_redis_url(jobservice_db_index=2, ...)
    # with idle_timeout_seconds=30, the URL the jobservice and Harbor's exporter get.
    enqueue(secured.client(2), NS, "REPLICATION", time.time() - 20)
    enqueue(secured.client(0), NS, "OTHER_DB", time.time())
    url = f"redis://:{QUOTED}@127.0.0.1:{secured.port}/2?idle_timeout_seconds=30"
    port = free_port()
    proc = serve(exporter_cmd(url, port), port)
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        out = stop(proc)
    got = samples(text)
    sizes = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}
    assert sizes == {(("type", "REPLICATION"),): 1}
    assert got[("harbor_task_exporter_up", ())] == 1
    assert got[("harbor_task_exporter_read_errors_total", ())] == 0
    assert PASSWORD not in out and QUOTED not in out
    assert f"redis://:***@127.0.0.1:{secured.port}/2?idle_timeout_seconds=30" in out
    promtool_check(text)


@pytest.mark.parametrize(
    "query",
    [
        # Every parameter Harbor's parsers take (src/lib/cache/redis/util.go,
        # src/lib/redis/pool.go), with values of the forms they accept.
        "idle_timeout_seconds=30",
        "idle_timeout=5m",
        "max_conn_age=0",
        "pool_size=10&pool_fifo=true&pool_timeout=4s&min_idle_conns=0",
        "max_retries=3&min_retry_backoff=8ms&max_retry_backoff=512ms",
        "dial_timeout=5&read_timeout=3s&write_timeout=1m",
        "read_timeout=-1",  # Harbor: <= 0 disables it; the exporter keeps its own
        "db=2",
        "idle_timeout_seconds=",  # empty: unset
    ],
)
def test_every_harbor_parameter_is_accepted(
    redis_server: RedisServer, registry: CollectorRegistry, query: str
) -> None:
    enqueue(redis_server.client(2), NS, "GC", time.time())
    path = "" if "db=" in query else "/2"
    RedisExporter(f"redis://127.0.0.1:{redis_server.port}{path}?{query}", timeout=5,
                  registry=registry)
    assert value(registry, "harbor_task_exporter_up") == 1
    assert value(registry, "harbor_task_queue_size", type="GC") == 1


def test_db_parameter_wins_over_the_path(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    enqueue(redis_server.client(3), NS, "IN_3", time.time())
    enqueue(redis_server.client(1), NS, "IN_1", time.time())
    RedisExporter(f"redis://127.0.0.1:{redis_server.port}/1?db=3", registry=registry)
    got = samples(scrape(registry))
    sizes = {k[1]: v for k, v in got.items() if k[0] == "harbor_task_queue_size"}
    assert sizes == {(("type", "IN_3"),): 1}  # as go-redis and Harbor's parser


def test_a_shorter_read_timeout_in_the_url_is_used(
    redis_server: RedisServer, registry: CollectorRegistry
) -> None:
    import threading

    enqueue(redis_server.client(), NS, "GC", time.time())
    # read_timeout=200ms under --timeout 30: a stalled Redis fails the read at the URL's
    # timeout (the client's), well before the scrape's own 30 s deadline.
    exporter = RedisExporter(f"{redis_server.url()}?read_timeout=200ms", timeout=30,
                             registry=registry)
    assert exporter._client.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    assert value(registry, "harbor_task_exporter_up") == 1
    stall = threading.Thread(
        target=lambda: redis_server.client().execute_command("DEBUG SLEEP 3"))
    stall.start()
    time.sleep(0.2)  # let DEBUG SLEEP reach the server first
    try:
        got = samples(scrape(registry))
        assert got[("harbor_task_exporter_up", ())] == 0
        assert stall.is_alive()  # the read gave up while Redis still slept
    finally:
        stall.join(30)


def run_cli(args: List[str], extra: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    # A short timeout: without the check, the exporter starts and serves forever.
    return subprocess.run([sys.executable, "-m", "jobmetrics.exporter", "--port", "0", *args],
                          capture_output=True, text=True, timeout=20, env=env(extra))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6379/2?idle_timeout_seconds=30&frobnicate=1",
         "unknown parameter 'frobnicate' (known: db, dial_timeout,"),
        ("redis://127.0.0.1:6379/2?socket_timeout=1", "unknown parameter 'socket_timeout'"),
        ("redis://127.0.0.1:6379/2?idle_timeout_seconds=soon",
         "parameter idle_timeout_seconds='soon' is not a duration"),
        ("redis://127.0.0.1:6379/2?pool_size=many", "parameter pool_size='many' is not a whole"),
        ("redis://127.0.0.1:6379/2?pool_fifo=maybe", "parameter pool_fifo='maybe' is not true"),
        ("redis://127.0.0.1:6379/2?ssl_ca_certs=/ca.pem", "parameter ssl_ca_certs needs rediss://"),
        ("redis+sentinel://127.0.0.1:26379", "the path must be /<master name>[/<db>]"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/two", "the database 'two' is not a number"),
        ("redis://h1:6379,h2:6379/0", "names several hosts: for Sentinel use redis+sentinel"),
    ],
)
def test_bad_url_exits_2_with_one_line_naming_it(url: str, reason: str) -> None:
    proc = run_cli(["--redis-url", url])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"jobmetrics-exporter: error: --redis-url={url!r}: {reason}")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "redis://harbor:hunter2@127.0.0.1:6379/zero",
        "redis+sentinel://:hunter2@127.0.0.1:26379",
        "redis://127.0.0.1:6379/0?password=hunter2&bogus=1",
    ],
)
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_password_never_shown_in_url_errors(url: str, source: str) -> None:
    if source == "flag":
        proc = run_cli(["--redis-url", url])
        name = "--redis-url"
    else:
        proc = run_cli([], {ENV["redis_url"]: url})
        name = ENV["redis_url"]
    assert proc.returncode == 2, proc.stderr
    assert "hunter2" not in proc.stderr
    assert f"error: {name}='redis" in proc.stderr and "***" in proc.stderr


def test_bad_url_in_process_is_a_value_error_without_the_password() -> None:
    with pytest.raises(ValueError) as info:
        RedisExporter("redis://:hunter2@127.0.0.1:6379/2?frobnicate=1", registry=None)
    assert str(info.value).startswith(
        "redis_url='redis://:***@127.0.0.1:6379/2?frobnicate=1': unknown parameter 'frobnicate'"
    )


# -- Sentinel ----------------------------------------------------------------------------


@pytest.fixture
def sentinel_pair(tmp_path: Path) -> Iterator[tuple]:
    """A master (with a password), a replica of it and one Sentinel watching both."""
    master = RedisServer(tmp_path / "m", password=PASSWORD)
    replica = RedisServer(tmp_path / "r", password=PASSWORD,
                          args=["--masterauth", PASSWORD])
    for s in (master, replica):
        s.workdir.mkdir()
    master.start()
    replica.args += ["--replicaof", "127.0.0.1", str(master.port)]
    replica.start()
    sentinel = RedisSentinel(tmp_path, master)
    try:
        sentinel.start()
        yield master, replica, sentinel
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def test_harbors_sentinel_url_follows_a_failover(sentinel_pair: tuple) -> None:
    master, replica, sentinel = sentinel_pair
    # Harbor: redis+sentinel://[:password@]host1:port1,host2:port2/<master set>/<db>
    # (get_redis_url with sentinel_master_set). The first Sentinel listed is down.
    url = (f"redis+sentinel://:{QUOTED}@127.0.0.1:{free_port()},127.0.0.1:{sentinel.port}"
           f"/{sentinel.name}/2?idle_timeout_seconds=30")
    enqueue(master.client(2), NS, "GC", time.time())
    port = free_port()
    proc = serve(exporter_cmd(url, port, "--timeout", "3"), port)
    try:
        got = samples(get(f"http://127.0.0.1:{port}/metrics"))
        assert got[("harbor_task_queue_size", (("type", "GC"),))] == 1
        assert got[("harbor_task_exporter_up", ())] == 1

        # Promote the replica, stop the old master: the exporter asks the Sentinel again.
        sentinel.wait(lambda: replica.client().info("replication")["master_link_status"]
                      == "up", "replica")
        sentinel.wait(lambda: any(r["port"] == replica.port for r in
                                  sentinel.client().sentinel_slaves(sentinel.name)), "replica")
        sentinel.client().execute_command("SENTINEL FAILOVER", sentinel.name)
        sentinel.wait(lambda: sentinel.master_port() == replica.port, "failover")
        sentinel.wait(lambda: replica.client().info("replication")["role"] == "master",
                      "promotion")
        master.stop()
        enqueue(replica.client(2), NS, "GC", time.time())
        got = samples(get(f"http://127.0.0.1:{port}/metrics"))
    finally:
        out = stop(proc)
    assert got[("harbor_task_exporter_up", ())] == 1, out
    assert got[("harbor_task_queue_size", (("type", "GC"),))] == 2
    assert PASSWORD not in out and QUOTED not in out


def test_sentinel_down_is_up_0_not_a_startup_error(registry: CollectorRegistry) -> None:
    RedisExporter(f"redis+sentinel://127.0.0.1:{free_port()}/mymaster/2", timeout=1,
                  registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0
    assert got[("harbor_task_exporter_read_errors_total", ())] == 1


# -- key prefix --------------------------------------------------------------------------


def warnings_in(out: str) -> List[str]:
    return [line for line in out.splitlines() if "nothing found under the key prefix" in line]


@pytest.mark.parametrize(
    ("prefix", "queue", "warned"),
    [
        ("harbor_job_service_namespace", None, True),  # Harbor's namespace without braces
        ("harbor_job_service_namespace:", None, True),
        ("harbor_job_service_namespace", "GC", True),  # given types: all empty
        ("{harbor_job_service_namespace}", None, False),  # right, and finds jobs
        ("{other_namespace}", None, False),  # braces: Harbor's form, just an idle one
        ("work", None, False),  # a prefix of the user's that finds jobs
    ],
)
def test_key_prefix_without_braces_that_finds_nothing_warns_once(
    redis_server: RedisServer, prefix: str, queue: Optional[str], warned: bool
) -> None:
    r = redis_server.client()
    enqueue(r, NS, "GC", time.time())
    enqueue(r, "work", "GC", time.time())
    port = free_port()
    extra = ["--key-prefix", prefix] + (["--queue", queue] if queue else [])
    proc = serve(exporter_cmd(redis_server.url(), port, *extra), port)
    try:
        for _ in range(3):
            wait_http(f"http://127.0.0.1:{port}/metrics")
            get(f"http://127.0.0.1:{port}/metrics")
    finally:
        out = stop(proc)
    lines = warnings_in(out)
    if warned:
        assert len(lines) == 1, out
        assert lines[0].endswith(
            f"WARNING jobmetrics exporter: layout harbor: nothing found under the key "
            f"prefix {prefix!r}; Harbor's jobservice wraps its namespace in braces: "
            "--key-prefix '{harbor_job_service_namespace}' (logged once)"
        )
    else:
        assert lines == [], out
