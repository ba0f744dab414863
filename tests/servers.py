"""Real servers started by the tests on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from promcheck import Labels, samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def get(url: str, timeout: float = 30) -> str:
    """The body of a GET of ``url``."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def scrape_until(base: str, ok: Callable[[Dict[Tuple[str, Labels], float]], bool],
                 timeout: float = 20) -> Tuple[str, Dict[Tuple[str, Labels], float]]:
    """Scrape ``base``/metrics until ``ok`` holds or ``timeout`` passes; the last scrape.

    A server counts a request just after sending its response, so a client that has its
    answer may scrape a moment before the count moves.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = get(base + "/metrics")
        got = samples(text)
        if ok(got) or time.monotonic() > deadline:
            return text, got
        time.sleep(0.05)


@contextmanager
def pushgateway(tmp: Path) -> Iterator[str]:
    """A real prometheus-pushgateway on 127.0.0.1; yields 'host:port'."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway missing (scripts/test.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp / 'pg'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
