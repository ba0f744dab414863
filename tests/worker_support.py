"""What the job-framework integration tests share: scrape readers, a held job's pid, and
running an example as its docs page documents it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

from mpservers import P
from promcheck import Labels

Got = Dict[Tuple[str, Labels], float]


def total(got: Got, type: str, status: str) -> float:
    """``task_total{type, status}`` in a parsed scrape (-1 when absent)."""
    return got.get((P + "task_total", (("status", status), ("type", type))), -1.0)


def gauge(got: Got, family: str, type: str) -> float:
    """A per-type gauge (``running_task``, ``pending_task``) in a parsed scrape."""
    return got.get((P + family, (("type", type),)), 0.0)


def wait_file(path: Path) -> int:
    """The pid a held job wrote to ``path``, once it has."""
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return int(path.read_text())


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 60,
                env: Optional[Dict[str, str]] = None) -> str:
    """Run ``examples/<name>`` with ``args`` as its docs page does, in an environment
    without the test's ``JOBMETRICS_*`` or ``PROMETHEUS_MULTIPROC_DIR`` (plus ``env``);
    its standard output, once it has exited 0."""
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith("JOBMETRICS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    run_env.update(env or {})
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=run_env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
