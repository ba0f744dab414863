"""`python -m jobmetrics demo` and the `jobmetrics` script: a real job service whose
/metrics shows every family of SPEC section 1 moving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Set

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobmetrics.__main__ import main
from promcheck import promtool_check, samples
from servers import free_port, wait_http

SPEC_FAMILIES = (
    "http_inflight_requests", "http_request", "http_request_duration_seconds",
    "task", "task_process_time_seconds", "task_success_rate", "running_task",
    "pending_task", "queue_size", "info",
)
P = "harbor_jobservice_"


def fetch(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def families(text: str) -> Dict[str, Set[str]]:
    """family name -> sample names with a non-zero value."""
    out: Dict[str, Set[str]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, set())
        for s in fam.samples:
            if s.value:
                out[fam.name].add(s.name)
    return out


def test_demo_shows_every_family(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBMETRICS_",
                                                                   "PROMETHEUS_MULTIPROC"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobmetrics", "demo", "--port", str(port), "--duration", "30"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        assert first.split()[-1] == f"{base}/metrics"
        wait_http(base + "/")
        status, body = fetch(base + "/jobs?type=replication", b"")
        assert status == 202 and json.loads(body)["type"] == "replication"
        status, body = fetch(base + "/jobs?type=nope", b"")
        assert status == 400
        status, _ = fetch(base + "/jobs/submit?type=gc")
        assert status == 202
        status, body = fetch(base + "/jobs")
        assert status == 200 and "queued" in json.loads(body)
        status, body = fetch(base + "/jobs?type=scan&wait=1", b"")  # waits for the run
        assert status == 200 and json.loads(body)["status"] in ("success", "fail")
        text = ""
        for _ in range(300):  # jobs take up to 0.6 s; give every type a success and a fail
            _, raw = fetch(base + "/metrics")
            text = raw.decode()
            if all(_nonzero(text, "task_total", "success", t) for t in ("replication", "gc",
                                                                        "scan")) \
                    and _nonzero(text, "task_total", "fail"):
                break
            time.sleep(0.1)
        # The demo keeps a backlog in the queue and requests in flight: most scrapes, not
        # a lucky one, see both (before, 100 of 100 saw an empty queue).
        seen = []
        for _ in range(20):
            got = samples(fetch(base + "/metrics")[1].decode())
            seen.append((got[(P + "queue_size", (("queue", "jobs"),))],
                         got[(P + "http_inflight_requests", ())]))
        busy = [s for s in seen if s[0] > 0 and s[1] > 0]
        assert len(busy) >= 15, seen
        names = families(text)
        for fam in SPEC_FAMILIES:
            assert P + fam in names, fam
        assert P + "queue_wait_seconds" in names
        for task_type in ("replication", "gc", "scan"):
            assert _nonzero(text, "task_total", "success", task_type), task_type
        assert _nonzero(text, "task_total", "fail")
        assert f'{P}http_request_total{{code="202",method="POST",operation="/jobs"}}' in text
        assert 'operation="unknown"' in text
        assert 'queue="jobs"' in text
        assert "process_cpu_seconds_total" in text and "python_info" in text
        promtool_check(text)
    finally:
        proc.terminate()
        proc.wait(10)


def _nonzero(text: str, family: str, status: str, task_type: str | None = None) -> bool:
    for line in text.splitlines():
        if (line.startswith(f"{P}{family}{{") and f'status="{status}"' in line
                and (task_type is None or f'type="{task_type}"' in line)
                and float(line.rsplit(" ", 1)[1]) > 0):
            return True
    return False


def test_demo_stops_by_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobmetrics", "demo", "--port", "0", "--duration", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/metrics" in proc.stdout


def test_console_script_declared() -> None:
    script = shutil.which("jobmetrics", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed with its scripts")
    proc = subprocess.run([script, "demo", "--help"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and "--duration" in proc.stdout


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--port", "70000"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["demo", "--duration", "-1"])
    assert main([]) == 2
