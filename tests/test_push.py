"""Short-lived jobs pushing to a real Pushgateway."""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobmetrics import JobMetrics, Stopped
from promcheck import samples
from servers import free_port, pushgateway

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    with pushgateway(tmp_path) as address:
        yield address


def gateway_samples(address: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        return samples(resp.read().decode())


def test_success_then_failure(m: JobMetrics, gateway: str) -> None:
    @m.task("nightly_gc")
    def gc(fail: bool) -> None:
        if fail:
            raise RuntimeError("disk full")

    with m.push_on_exit(gateway, job="gc", grouping_key={"instance": "node-1"}):
        gc(False)
    got = gateway_samples(gateway)
    key = (("instance", "node-1"), ("job", "gc"))
    assert got[("harbor_jobservice_task_total",
                (*key[:1], key[1], ("status", "success"), ("type", "nightly_gc")))] == 1.0
    first = got[("harbor_jobservice_batch_last_success_timestamp_seconds", key)]
    assert first > 1.7e9
    assert got[("harbor_jobservice_task_process_time_seconds_count",
                (("instance", "node-1"), ("job", "gc"), ("status", "success"),
                 ("type", "nightly_gc")))] == 1.0
    # Families that mean nothing after the job has ended are not pushed.
    names = {name for name, labels in got if ("job", "gc") in labels}
    assert "harbor_jobservice_task_total" in names
    assert "harbor_jobservice_running_task" not in names
    assert "harbor_jobservice_pending_task" not in names
    assert "harbor_jobservice_http_inflight_requests" not in names
    assert not any(n.startswith("process_") for n in names)

    with pytest.raises(RuntimeError, match="disk full"), m.push_on_exit(
        gateway, job="gc", grouping_key={"instance": "node-1"}
    ):
        gc(True)
    got = gateway_samples(gateway)
    assert got[("harbor_jobservice_task_total",
                (("instance", "node-1"), ("job", "gc"), ("status", "fail"),
                 ("type", "nightly_gc")))] == 1.0
    # A failed run keeps the time of the last success.
    assert got[("harbor_jobservice_batch_last_success_timestamp_seconds", key)] == first


def test_decorator_and_stop(m: JobMetrics, gateway: str) -> None:
    @m.push_on_exit(gateway, job="scan")
    @m.task("scan")
    def scan() -> int:
        raise Stopped("cancelled")

    with pytest.raises(Stopped):
        scan()
    got = gateway_samples(gateway)
    assert got[("harbor_jobservice_task_total",
                (("instance", ""), ("job", "scan"), ("status", "stop"), ("type", "scan")))] == 1.0


def test_unreachable_gateway_never_raises(
    m: JobMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    block = m.push_on_exit(address, job="j", timeout=2)
    with caplog.at_level(logging.ERROR, logger="jobmetrics"), block:
        pass
    assert block.last_error is not None
    assert "push to" in caplog.text
    with pytest.raises(ZeroDivisionError), m.push_on_exit(address, job="j", timeout=2):
        1 / 0  # noqa: B018  # the job's own exception wins


def test_bad_arguments(m: JobMetrics) -> None:
    with pytest.raises(ValueError, match="job"):
        m.push_on_exit("localhost:9091", job="")
    with pytest.raises(TypeError, match="gateway"):
        m.push_on_exit("", job="j")
    with pytest.raises(TypeError, match="grouping_key"):
        m.push_on_exit("localhost:9091", job="j", grouping_key={"a": 1})  # type: ignore[dict-item]


def test_cron_example_pushes(gateway: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "batch_job.py"), "--gateway", gateway],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    got = gateway_samples(gateway)
    names = {name for name, _ in got}
    assert "harbor_jobservice_batch_last_success_timestamp_seconds" in names
    assert sum(v for (n, labels), v in got.items() if n == "harbor_jobservice_task_total"
               and ("job", "nightly_gc") in labels) == 3.0


@pytest.mark.parametrize("scheme", ["http://", ""])
def test_failed_push_never_logs_the_password(
    m: JobMetrics, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    gateway = f"{scheme}alice:s3cr%21t@127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.ERROR, logger="jobmetrics"), \
            m.push_on_exit(gateway, job="j", timeout=2) as block:
        pass
    assert block.last_error is not None
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith(f"jobmetrics: push to {scheme}alice:***@127.0.0.1:")
    assert "s3cr" not in message
