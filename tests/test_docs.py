"""Every Python block in docs/ and every example runs as it is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    out = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            out.append((f"{page.name}#{i + 1}", code))
    return out


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_doc_block_runs(where: str, code: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr.decode()}"


def test_example_job_service_serves_metrics() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "job_service.py"), "--port", "0",
         "--duration", "30"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        done = re.compile(r'harbor_jobservice_task_total\{status="success",type="\w+"\} [1-9]')
        text = ""
        for _ in range(100):  # the workers need a moment to finish their first jobs
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            if done.search(text):
                break
            time.sleep(0.1)
        assert done.search(text), text
        assert 'harbor_jobservice_info{node=' in text
    finally:
        proc.terminate()
        proc.wait(10)
