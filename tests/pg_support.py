"""A real PostgreSQL 15 for the exporter tests, started in a temporary directory.

``pg_server`` (session scope) runs Debian's ``postgres`` binaries from a fresh ``initdb``
on a free loopback port, as an unprivileged user when the tests run as root (PostgreSQL
refuses to run as root), and stops it by PID at the end. Host connections need the
password (scram-sha-256), so the URLs the tests hand the exporter carry one; the tests'
own connections use the local socket in the data directory.

``stop()``/``start()`` restart the same cluster on the same port to test an outage.
Each test module makes its own database with ``new_database()``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from servers import free_port

BINDIR = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
PASSWORD = "s3cr3t-pw-never-shown"


def _runas() -> Dict[str, Any]:
    """Popen arguments that drop root to ``nobody`` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1 in a temporary directory."""

    def __init__(self) -> None:
        if not (BINDIR / "postgres").exists():
            pytest.skip("PostgreSQL 15 missing (Debian package postgresql-15; scripts/test.sh)")
        self.root = Path(tempfile.mkdtemp(prefix="jobmetrics-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._runas = _runas()
        if self._runas:
            os.chown(self.root, self._runas["user"], self._runas["group"])
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._runas:
            os.chown(pwfile, self._runas["user"], self._runas["group"])
        subprocess.run(
            [str(BINDIR / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True, **self._runas,
        )
        pwfile.unlink()

    def url(self, db: str = "postgres", password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres") -> Any:
        """An autocommit psycopg connection over the local socket (no password)."""
        import psycopg

        return psycopg.connect(host=str(self.root), port=self.port, user=USER, dbname=db,
                               autocommit=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BINDIR / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=60", "-c", "shared_buffers=64MB",
             "-c", "log_min_messages=fatal", "-c", "timezone=UTC"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._runas,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.connect().close()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT): sessions are closed, the data stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self.proc = None

    def new_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL, started once and stopped after the last test."""
    pytest.importorskip("psycopg")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
