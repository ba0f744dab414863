"""`jobmetrics-exporter` / `python -m jobmetrics.exporter` end to end over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from rq import Queue

from exporter_support import RedisServer, enqueue, lock
from jobmetrics.exporter.cli import ENV
from promcheck import promtool_check, samples
from servers import free_port, wait_http

NS = "{harbor_job_service_namespace}"
CONSOLE = Path(sys.executable).with_name("jobmetrics-exporter")


def env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_EXPORTER_")}
    return {**clean, **(extra or {})}


def run(args: List[str], extra: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobmetrics.exporter", *args],
        capture_output=True, text=True, timeout=60, env=env(extra),
    )


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        body: bytes = resp.read()
        return body.decode()


def serve(cmd: List[str], port: int, extra: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env(extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
    except Exception:
        proc.kill()
        out, _ = proc.communicate(10)
        raise AssertionError(f"exporter did not start:\n{out}") from None
    return proc


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return str(out)


def test_python_m_serves_the_harbor_layout(redis_server: RedisServer) -> None:
    r = redis_server.client()
    enqueue(r, NS, "REPLICATION", time.time() - 20)
    enqueue(r, NS, "REPLICATION", time.time())
    lock(r, NS, "REPLICATION", "pool-1", 3)
    port = free_port()
    proc = serve(
        [sys.executable, "-m", "jobmetrics.exporter", "--redis-url", redis_server.url(),
         "--port", str(port), "--addr", "127.0.0.1", "--cache-seconds", "0"],
        port,
    )
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
        root = get(f"http://127.0.0.1:{port}/")
        with pytest.raises(urllib.error.HTTPError) as err:
            get(f"http://127.0.0.1:{port}/favicon.ico")
    finally:
        out = stop(proc)
    assert err.value.code == 404
    assert "harbor_task_exporter_up 1.0" in root
    got = samples(text)
    assert got[("harbor_task_queue_size", (("type", "REPLICATION"),))] == 2
    assert 19 <= got[("harbor_task_queue_latency", (("type", "REPLICATION"),))] <= 60
    assert got[("harbor_task_concurrency", (("pool", "pool-1"), ("type", "REPLICATION")))] == 3
    assert got[("harbor_task_exporter_up", ())] == 1
    assert any(name.startswith("process_") for name, _ in got)
    assert "serving http://127.0.0.1" in out
    promtool_check(text)


def test_console_script_configured_by_environment(redis_server: RedisServer) -> None:
    if not CONSOLE.exists():
        pytest.skip("console script not installed (pip install -e .)")
    r = redis_server.client()
    for name in ("a", "b", "c"):
        Queue(name, connection=r).enqueue("os.getcwd")
    port = free_port()
    proc = serve(
        [str(CONSOLE), "--queue", "a", "--queue", "b"],
        port,
        {ENV["redis_url"]: redis_server.url(), ENV["layout"]: "rq", ENV["port"]: str(port),
         ENV["addr"]: "127.0.0.1", ENV["namespace"]: "acme", ENV["queue"]: "c",
         ENV["scheduled_total"]: "true"},
    )
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop(proc)
    got = samples(text)
    sizes = {k[1]: v for k, v in got.items() if k[0] == "acme_task_queue_size"}
    assert sizes == {(("queue", "a"),): 1, (("queue", "b"),): 1}  # flags win over env
    assert got[("acme_task_scheduled_total", (("queue", "a"),))] == 0


def test_redis_down_still_serves_health(tmp_path: Path) -> None:
    port = free_port()
    proc = serve(
        [sys.executable, "-m", "jobmetrics.exporter", "--redis-url",
         f"redis://127.0.0.1:{free_port()}/0", "--port", str(port), "--addr", "127.0.0.1",
         "--timeout", "1"],
        port,
    )
    try:
        got = samples(get(f"http://127.0.0.1:{port}/metrics"))
    finally:
        stop(proc)
    assert got[("harbor_task_exporter_up", ())] == 0


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--redis-url", "http://127.0.0.1:6379"], {}, "--redis-url='http://127.0.0.1:6379': must"),
        ([], {ENV["redis_url"]: "http://h"}, "JOBMETRICS_EXPORTER_REDIS_URL='http://h': must"),
        (["--log-level", "loud"], {}, "'loud' is not one of DEBUG"),
        ([], {ENV["log_level"]: "loud"}, "JOBMETRICS_EXPORTER_LOG_LEVEL='loud'"),
        (["--redis-url", "redis://127.0.0.1:port/0"], {}, "is not a valid URL"),
        (["--layout", "sidekiq"], {}, "'sidekiq' is not a layout"),
        (["--port", "70000"], {}, "70000 is not a port number"),
        (["--cache-seconds", "-1"], {}, "must be a finite number >= 0"),
        (["--timeout", "0"], {}, "must be a finite number > 0"),
        (["--namespace", "bad-ns"], {}, "namespace='bad-ns'"),
        ([], {ENV["port"]: "http"}, "JOBMETRICS_EXPORTER_PORT='http'"),
        ([], {ENV["layout"]: "nope"}, "JOBMETRICS_EXPORTER_LAYOUT='nope'"),
        ([], {ENV["scheduled_total"]: "maybe"}, "JOBMETRICS_EXPORTER_SCHEDULED_TOTAL"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_option_exits_non_zero_with_a_clear_message(
    args: List[str], extra: Dict[str, str], message: str
) -> None:
    proc = run(args, extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_redis_package_is_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from jobmetrics.exporter.cli import main\n"
        "sys.exit(main(['--port', '0']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env())
    assert proc.returncode == 2
    assert "pip install 'jobmetrics[redis]'" in proc.stderr


def test_port_in_use_exits_non_zero(redis_server: RedisServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run(["--redis-url", redis_server.url(), "--port", str(port),
                    "--addr", "127.0.0.1"])
    assert proc.returncode == 2
    assert proc.stderr == (f"jobmetrics-exporter: error: cannot listen on 127.0.0.1:{port}: "
                           "Address already in use\n")


def test_help_lists_every_environment_variable() -> None:
    proc = run(["--help"])
    assert proc.returncode == 0
    for var in ENV.values():
        assert var in proc.stdout


def test_example_script_runs(redis_server: RedisServer) -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "exporter_rq.py"), "--redis-url",
         redis_server.url()],
        capture_output=True, text=True, timeout=60, env=env(),
    )
    assert proc.returncode == 0, proc.stderr
    got = samples(proc.stdout)
    assert got[("harbor_task_queue_size", (("queue", "example-emails"),))] == 3
    assert got[("harbor_task_scheduled", (("queue", "example-emails"),))] == 1
    promtool_check(proc.stdout)
