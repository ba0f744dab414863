"""`rediss://` and `rediss+sentinel://` against a redis-server with TLS, CA made by the test."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
from prometheus_client import CollectorRegistry

from exporter_support import REDIS_SERVER, enqueue
from jobmetrics.exporter import RedisExporter
from promcheck import samples, scrape, value
from servers import free_port

NS = "{harbor_job_service_namespace}"


def make_certs(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1, with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl missing")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=jobmetrics test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem")


class TLSProcess:
    """redis-server (or Sentinel) listening with TLS only, on a free loopback port."""

    def __init__(self, certs: Path, sentinel_of: Optional[int] = None) -> None:
        self.binary = shutil.which("redis-server") or REDIS_SERVER
        if not Path(self.binary).exists():
            pytest.skip("redis-server missing (scripts/test.sh installs it)")
        self.certs = certs
        self.port = free_port()
        tls = ["tls-cert-file", str(certs / "server.pem"), "tls-key-file",
               str(certs / "server.key"), "tls-ca-cert-file", str(certs / "ca.pem"),
               "tls-auth-clients", "no"]
        conf = [f"port 0\ntls-port {self.port}\nbind 127.0.0.1\ndir {certs}\nsave \"\"\n"]
        conf += [f"{k} {v}\n" for k, v in zip(tls[::2], tls[1::2])]
        if sentinel_of is not None:
            conf += ["tls-replication yes\n",
                     f"sentinel monitor mymaster 127.0.0.1 {sentinel_of} 1\n"]
        path = certs / f"redis-{self.port}.conf"
        path.write_text("".join(conf))
        args: List[str] = [self.binary, str(path)]
        if sentinel_of is not None:
            args.append("--sentinel")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server with TLS did not start") from None
                time.sleep(0.05)

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, ssl=True,
                           ssl_ca_certs=str(self.certs / "ca.pem"), socket_timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    certs = tmp_path_factory.mktemp("tls")
    make_certs(certs)
    master = TLSProcess(certs)
    try:
        sentinel = TLSProcess(certs, sentinel_of=master.port)
        try:
            yield certs, master, sentinel
        finally:
            sentinel.stop()
    finally:
        master.stop()


def test_rediss_with_the_ca_from_the_url(tls_pair: tuple) -> None:
    certs, master, _ = tls_pair
    enqueue(master.client(2), NS, "TLS_GC", time.time())
    registry = CollectorRegistry()
    RedisExporter(f"rediss://127.0.0.1:{master.port}/2?idle_timeout_seconds=30"
                  f"&ssl_ca_certs={certs / 'ca.pem'}", registry=registry)
    assert value(registry, "harbor_task_queue_size", type="TLS_GC") == 1
    assert value(registry, "harbor_task_exporter_up") == 1


def test_rediss_without_the_ca_fails_verification(tls_pair: tuple) -> None:
    _, master, _ = tls_pair
    registry = CollectorRegistry()
    RedisExporter(f"rediss://127.0.0.1:{master.port}/2", timeout=5, registry=registry)
    got = samples(scrape(registry))
    assert got[("harbor_task_exporter_up", ())] == 0  # a self-made CA is not trusted


def test_rediss_sentinel(tls_pair: tuple) -> None:
    certs, master, sentinel = tls_pair
    enqueue(master.client(3), NS, "TLS_SENTINEL", time.time())
    registry = CollectorRegistry()
    RedisExporter(f"rediss+sentinel://127.0.0.1:{sentinel.port}/mymaster/3"
                  f"?ssl_ca_certs={certs / 'ca.pem'}", timeout=5, registry=registry)
    assert value(registry, "harbor_task_exporter_up") == 1
    assert value(registry, "harbor_task_queue_size", type="TLS_SENTINEL") == 1
