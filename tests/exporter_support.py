"""A real redis-server for the exporter tests, and gocraft/work-shaped data for `harbor`.

``redis_server`` starts ``redis-server`` on a free loopback port in a temporary directory
(no persistence) and stops it after the test; ``stop()``/``start()`` restart it on the
same port to test an outage.

The gocraft/work helpers write exactly what gocraft/work's ``Enqueuer`` and worker pool
write (gocraft/work ``redis.go``, ``enqueue.go``, ``worker_pool.go``), with the key
prefix ``ns`` (``:`` appended unless present):

- ``enqueue``: ``SADD ns:known_jobs <name>`` then ``LPUSH ns:jobs:<name> <job JSON>``
  where the job JSON is ``{"name", "id", "t" (enqueue time, epoch seconds), "args"}``;
  the worker ``RPOPLPUSH``es from the tail, so the oldest job is at the tail;
- ``lock``: ``HINCRBY ns:jobs:<name>:lock_info <pool id> <n>``, as the fetch script does
  for each job a pool starts;
- ``schedule``: ``ZADD ns:scheduled <run at> <job JSON>``, as ``EnqueueIn`` does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from servers import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url(db)`` to reach it."""

    def __init__(self, workdir: Path, password: Optional[str] = None,
                 args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server") or REDIS_SERVER
        if not Path(binary).exists():
            pytest.skip("redis-server missing (scripts/test.sh installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.args = list(args)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=10,
                           password=self.password)

    def _debug_flag(self) -> List[str]:
        # The tests stall the server with DEBUG SLEEP; Redis 7 refuses DEBUG unless told
        # (and Redis 6 does not know the option).
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        match = re.search(r"v=(\d+)\.", out.stdout)
        if match and int(match.group(1)) >= 7:
            return ["--enable-debug-command", "local"]
        return []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self._debug_flag(),
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _ns(ns: str) -> str:
    return ns if not ns or ns.endswith(":") else ns + ":"


def gocraft_job(name: str, t: float, args: Optional[Dict[str, Any]] = None) -> bytes:
    """gocraft/work's job JSON."""
    job = {"name": name, "id": uuid.uuid4().hex[:24], "t": int(t), "args": args or {}}
    return json.dumps(job).encode()


def enqueue(client: Any, ns: str, name: str, t: float) -> None:
    """As gocraft/work's ``Enqueuer.Enqueue`` with the clock at ``t``."""
    client.sadd(_ns(ns) + "known_jobs", name)
    client.lpush(_ns(ns) + "jobs:" + name, gocraft_job(name, t))


def lock(client: Any, ns: str, name: str, pool: str, n: int = 1) -> None:
    """As gocraft/work's fetch script when pool ``pool`` starts ``n`` jobs of ``name``."""
    client.hincrby(_ns(ns) + "jobs:" + name + ":lock_info", pool, n)


def schedule(client: Any, ns: str, name: str, run_at: float) -> None:
    """As gocraft/work's ``Enqueuer.EnqueueIn``."""
    client.zadd(_ns(ns) + "scheduled", {gocraft_job(name, run_at): run_at})


def command_counts(client: Any) -> Dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats``."""
    stats = client.info("commandstats")
    return {k[len("cmdstat_"):]: int(v["calls"]) for k, v in stats.items()}


class RedisSentinel:
    """``redis-server --sentinel`` on a free loopback port, watching ``master``.

    One Sentinel (quorum 1), so ``SENTINEL FAILOVER`` promotes a replica without a vote;
    its configuration file lives in ``workdir`` (Sentinel rewrites it).
    """

    def __init__(self, workdir: Path, master: RedisServer, name: str = "mymaster") -> None:
        self.binary = master.binary
        self.workdir = workdir
        self.master = master
        self.name = name
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> None:
        conf = self.workdir / f"sentinel-{self.port}.conf"
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.workdir}",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.name} 60000",
            f"sentinel failover-timeout {self.name} 60000",
        ]
        if self.master.password:
            lines.append(f"sentinel auth-pass {self.name} {self.master.password}")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait(lambda: self.master_port() == self.master.port)

    def master_port(self) -> Optional[int]:
        """The master's port in ``SENTINEL MASTER``, which redis-py asks.

        Not ``GET-MASTER-ADDR-BY-NAME``: during a failover it already names the promoted
        replica while ``SENTINEL MASTER`` keeps the old address until the switch.
        """
        state = self.client().sentinel_master(self.name)
        return int(state["port"]) if state else None

    def wait(self, ok: Any, what: str = "Sentinel") -> None:
        """Poll ``ok()`` until true (20 s at most: this is a readiness wait, not a timing)."""
        deadline = time.monotonic() + 20
        while True:
            try:
                if ok():
                    return
            except Exception:
                pass
            if (self.proc is not None and self.proc.poll() is not None) or \
                    time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
