"""jobmetrics.apscheduler on real APScheduler 4.x (4.0.0a6) schedulers.

The main virtualenv has APScheduler 3.x, so tests/apscheduler4_run.py runs in
``.venv-aps4`` (scripts/test.sh makes it) as a subprocess: a sync ``Scheduler`` and an
``AsyncScheduler`` running real jobs, then the scrape it prints is checked here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from promcheck import promtool_check, samples
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-aps4" / "bin" / "python"
SCRIPT = ROOT / "tests" / "apscheduler4_run.py"
P = "harbor_jobservice_"

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(),
    reason="no .venv-aps4 with APScheduler 4.0.0a6 (scripts/test.sh makes it: python3 -m "
           "venv .venv-aps4 && .venv-aps4/bin/pip install -e . 'apscheduler==4.0.0a6')")


def run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["JOBMETRICS_ADDR"] = "127.0.0.1"
    proc = subprocess.run([str(PYTHON), str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def out() -> str:
    return run()


def scrape_of(out: str) -> str:
    return "".join(line + "\n" for line in out.splitlines()
                   if not line.startswith("# ") or line.startswith(("# HELP", "# TYPE")))


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((P + name, tuple(sorted(labels.items()))), 0.0)


def counts(text: str) -> Dict[Tuple[str, str], float]:
    found: Dict[Tuple[str, str], float] = {}
    for (name, labels), v in samples(text).items():
        if name == P + "task_process_time_seconds_count" and v:
            d = dict(labels)
            found[(d["type"], d["status"])] = v
    return found


TYPES: List[str] = ["ok", "boom", "inner_job", "inner", "late", "on_time", "block", "aok",
                    "forever", "ainner", "ainner_job"]


def test_outcomes_counted_exactly(out: str) -> None:
    text = scrape_of(out)
    assert counts(text) == {
        ("ok", "success"): 2,
        ("boom", "fail"): 1,
        # An inner @m.task takes the run over: counted once, under its own type (thread
        # pool and async executor).
        ("inner", "success"): 1,
        ("ainner", "success"): 1,
        # Due 30 s ago, grace 1 s: released missed_start_deadline, never run.
        ("late", "stop"): 1,
        ("on_time", "success"): 1,
        ("block", "success"): 2,
        ("aok", "success"): 1,
        # Running when the AsyncScheduler stopped: released cancelled.
        ("forever", "stop"): 1,
    }
    for t in TYPES:
        assert value(text, "running_task", type=t) == 0
        assert value(text, "pending_task", type=t) == 0
    # Only jobs from a schedule that started have a lag: on_time.
    assert value(text, "queue_wait_seconds_count", queue="default") == 1
    assert 0 <= value(text, "queue_wait_seconds_sum", queue="default") < 10
    # The missed job never started: 0 s.
    assert value(text, "task_process_time_seconds_sum", type="late", status="stop") < 0.01
    promtool_check(text)


def test_overlapping_runs_of_one_task_apart(out: str) -> None:
    # max_running_jobs=2: both jobs of "block" running at once.
    assert "# during running_task 2" in out.splitlines()


def test_bad_target_and_twice(out: str) -> None:
    lines = out.splitlines()
    assert "# type ok" in lines
    assert "# twice ok" in lines
    assert "# executors ok" in lines


def test_port_serves_until_stopped() -> None:
    lines = run("serve", str(free_port())).splitlines()
    assert lines == ["# served ok", "# closed ok"]


def test_doc_block_runs() -> None:
    """docs/apscheduler.md: its 4.x (``py``) block, as it is."""
    page = (ROOT / "docs" / "apscheduler.md").read_text()
    code = page.split("```py\n")[1].split("```")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
