"""`jobmetrics mixin`: rule files checked by promtool, every alert unit-tested with
`promtool test rules`, and every rule and dashboard query run by a real Prometheus that
scrapes real jobmetrics services (the demo, as a summary and as a histogram), the Redis
exporter over a real redis-server, and a real Pushgateway.

One Prometheus, Redis and Pushgateway serve the whole module (1 s scrape and rule
evaluation intervals), so the module takes seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter_support import RedisServer, enqueue, lock, schedule
from jobmetrics import JobMetrics
from jobmetrics.__main__ import main
from jobmetrics.demo import Demo
from jobmetrics.exporter import RedisExporter
from jobmetrics.mixin import MixinConfig, Names, generate, write
from jobmetrics.mixin.alerts import alerts
from jobmetrics.mixin.rules import rules
from servers import free_port, pushgateway, wait_http

PROMETHEUS = "/usr/bin/prometheus"
NS = "{harbor_job_service_namespace}"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: Debian package 'prometheus' (scripts/test.sh installs it)")
    return promtool


@pytest.fixture(scope="module")
def mixin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixin")
    write(MixinConfig(), out)
    return out


def _dashboards(root: Path) -> Dict[str, Dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((root / "dashboards").glob("*.json"))}


def _panel_targets(board: Dict[str, Any]) -> List[Tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def _variable_queries(board: Dict[str, Any]) -> List[Tuple[str, str]]:
    return [(v["name"], v["definition"]) for v in board["templating"]["list"]
            if v["type"] == "query"]


# -- the files --------------------------------------------------------------------------


def test_writes_every_file(mixin_dir: Path) -> None:
    files = sorted(str(p.relative_to(mixin_dir)) for p in mixin_dir.rglob("*") if p.is_file())
    assert files == ["alerts.yaml", "dashboards/jobmetrics-exporter.json",
                     "dashboards/jobmetrics-harbor.json", "dashboards/jobmetrics-service.json",
                     "mixin.libsonnet", "rules.yaml"]
    # Deterministic: the same configuration writes the same bytes.
    assert generate(MixinConfig()) == {
        f: (mixin_dir / f).read_text() for f in files
    }


def test_promtool_check_rules(mixin_dir: Path) -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(mixin_dir / "alerts.yaml"),
                           str(mixin_dir / "rules.yaml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts(MixinConfig()))} rules found" in proc.stdout
    assert f"SUCCESS: {len(rules(MixinConfig()))} rules found" in proc.stdout


def test_alert_names_labels_and_runbooks(mixin_dir: Path) -> None:
    text = (DOCS / "alerts.md").read_text()
    names = [a.name for a in alerts(MixinConfig())]
    assert names == ["JobMetricsTasksFailing", "JobMetricsTasksStuck", "JobMetricsQueueBacklog",
                     "JobMetricsQueueLatencyHigh", "JobMetricsTasksSlow",
                     "JobMetricsExporterReadFailing", "JobMetricsBatchJobNotSucceeding",
                     "JobMetricsTargetDown"]
    for a in alerts(MixinConfig()):
        assert re.fullmatch(r"JobMetrics[A-Z][A-Za-z]+", a.name)
        assert a.severity in ("warning", "critical")
        assert a.summary and a.description
        assert f"\n### {a.name}\n" in text, f"docs/alerts.md has no runbook for {a.name}"
        # The per-instance sliding-window gauge is never alerted on.
        assert "task_success_rate" not in a.expr
    alerts_yaml = (mixin_dir / "alerts.yaml").read_text()
    assert "runbook_url" not in alerts_yaml
    with_url = generate(MixinConfig(runbook_url="https://example.org/docs/alerts.md"))
    assert ('runbook_url: "https://example.org/docs/alerts.md#jobmetricstasksfailing"'
            in with_url["alerts.yaml"])


def test_recording_rule_names() -> None:
    for record, _, _ in rules(MixinConfig()):
        level, metric, ops = record.split(":")
        assert level.startswith("job_") and re.fullmatch(r"[a-z_]+", level), record
        assert not metric.endswith("_total"), record
        assert re.fullmatch(r"(rate|ratio_rate|mean|quantile)5m|sum|max", ops), record
    records = [r for r, _, _ in rules(MixinConfig())]
    assert "job_type_status:harbor_jobservice_task:rate5m" in records
    assert "job_type:harbor_jobservice_task_fail_per_finished:ratio_rate5m" in records
    assert "job_type_quantile:harbor_jobservice_task_process_time_seconds:quantile5m" in records
    assert len(records) == len(set(
        (r, json.dumps(lab, sort_keys=True)) for r, _, lab in rules(MixinConfig())))


def test_dashboard_model(mixin_dir: Path) -> None:
    boards = _dashboards(mixin_dir)
    assert sorted(boards) == ["jobmetrics-exporter.json", "jobmetrics-harbor.json",
                              "jobmetrics-service.json"]
    uids = set()
    for name, board in boards.items():
        assert board["schemaVersion"] == 42
        uids.add(board["uid"])
        variables = board["templating"]["list"]
        assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
        names = [v["name"] for v in variables]
        assert {"datasource", "job", "instance"} <= set(names), name
        if name != "jobmetrics-exporter.json":
            assert "type" in names
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        cells = set()
        for p in board["panels"]:
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']} overlaps"
                    cells.add((x, y))
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert p["targets"] and all(t["datasource"] == p["datasource"]
                                            for t in p["targets"])
    assert len(uids) == 3


def _token(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_:]){re.escape(name)}(?![A-Za-z0-9_])")


def test_every_family_appears_in_a_dashboard(mixin_dir: Path) -> None:
    exprs = "\n".join(e for b in _dashboards(mixin_dir).values() for _, e in _panel_targets(b))
    missing = [n for n in Names.of(MixinConfig()).all().values() if not _token(n).search(exprs)]
    assert missing == []
    assert "process_" in exprs and "python_" in exprs


def test_harbor_view_uses_only_harbor_names(mixin_dir: Path) -> None:
    board = _dashboards(mixin_dir)["jobmetrics-harbor.json"]
    text = "\n".join([e for _, e in _panel_targets(board)]
                     + [d for _, d in _variable_queries(board)])
    used = {field for field, name in Names.of(MixinConfig()).all().items()
            if re.search(rf"(?<![A-Za-z0-9_:]){name}(_bucket|_sum|_count)?(?![A-Za-z0-9_])",
                         text)}
    # What Harbor's jobservice (task_total, task_process_time_seconds, info) and exporter
    # (queue_size, queue_latency, concurrency, scheduled_total) emit, plus jobmetrics'
    # name for the scheduled gauge as a fallback.
    assert used == {"tasks", "task_duration", "info", "exp_queue_size", "exp_queue_latency",
                    "exp_concurrency", "exp_scheduled_total", "exp_scheduled"}
    # Harbor's summary is read through its quantile series.
    assert 'harbor_jobservice_task_process_time_seconds{quantile="0.99"' in text


def test_prefix_change_moves_every_name(tmp_path: Path) -> None:
    config = MixinConfig(namespace="acme", subsystem="worker", exporter_namespace="acmeq")
    files = generate(config)
    default, moved = Names.of(MixinConfig()), Names.of(config)
    text = "\n".join(files.values())
    assert "harbor_" not in text
    for field, name in moved.all().items():
        assert name.startswith(("acme_worker_", "acmeq_task_")), field
        assert _token(name).search(text), f"{name} is in no file"
    for name in default.all().values():
        assert not _token(name).search(text), name
    write(config, tmp_path)
    proc = subprocess.run([_promtool(), "check", "rules", str(tmp_path / "alerts.yaml"),
                           str(tmp_path / "rules.yaml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "acme_worker_alerts" in files["alerts.yaml"]
    uids = [json.loads(files[f])["uid"] for f in files if f.endswith(".json")]
    assert all(u.startswith("acme-worker-") for u in uids)
    # A selector and extra grouping labels reach every query.
    scoped = generate(MixinConfig(selector='namespace="jobs"', group_by=("cluster", "job")))
    for _, expr, _ in rules(MixinConfig(selector='namespace="jobs"', group_by=("cluster",))):
        assert 'namespace="jobs"' in expr
    assert "cluster_job_type:harbor_jobservice_task_fail_per_finished" in scoped["rules.yaml"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["mixin", "--out", str(out), "--namespace", "acme", "--subsystem", "w",
                 "--exporter-namespace", "acme"]) == 0
    assert (out / "dashboards" / "jobmetrics-service.json").exists()
    assert "acme_w_task_total" in (out / "rules.yaml").read_text()
    assert str(out / "alerts.yaml") in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, needle in [
        (["--namespace", "9x"], "namespace='9x' is not a valid Prometheus metric name part"),
        (["--selector", "job=jobs"], "selector='job=jobs' is not a list of label matchers"),
        (["--fail-ratio", "1.5"], "fail_ratio must be in (0, 1)"),
        (["--stuck-seconds", "0"], "stuck_seconds must be a finite number > 0"),
        (["--group-by", "type"], "group_by: 'type' is already used"),
        (["--alert-prefix", "jobs"], "alert_prefix='jobs' must be CamelCase"),
        (["--namespace", "", "--subsystem", ""], "namespace and subsystem cannot both be empty"),
    ]:
        assert main(["mixin", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jobmetrics mixin: error: "), err
        assert needle in err, err
    assert main(["mixin", "--out", str(blocker / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to" in err
    for argv, needle in [([], "the following arguments are required: --out"),
                         (["--out", str(out), "--fail-ratio", "half"],
                          "argument --fail-ratio: invalid float value: 'half'")]:
        with pytest.raises(SystemExit) as exc:
            main(["mixin", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err == f"jobmetrics mixin: error: {needle}\n"


def test_libsonnet_imports_the_files(mixin_dir: Path) -> None:
    text = (mixin_dir / "mixin.libsonnet").read_text()
    for board in _dashboards(mixin_dir):
        assert f"import 'dashboards/{board}'" in text
    assert "importstr 'alerts.yaml'" in text and "importstr 'rules.yaml'" in text
    jsonnet = shutil.which("jsonnet")
    if jsonnet is None:
        return  # evaluated where jsonnet is installed
    proc = subprocess.run([jsonnet, "-e", "local m = import 'mixin.libsonnet'; "
                           "[std.length(m.prometheusAlerts.groups[0].rules), "
                           "std.length(std.objectFields(m.grafanaDashboards))]"],
                          cwd=mixin_dir, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [len(alerts(MixinConfig())), 3]


# -- promtool test rules: each alert fires when it should, silent when healthy -----------

TASK = "harbor_jobservice_task_total"


def _series(name: str, labels: Dict[str, str], values: str) -> Dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _alert(name: str, labels: Dict[str, str], severity: str, summary: str,
           description: str) -> Dict[str, Any]:
    return {"exp_labels": {**labels, "severity": severity},
            "exp_annotations": {"summary": summary, "description": description}}


J = {"job": "jobs", "instance": "a"}
X = {"job": "exporter", "instance": "e"}

#: ``(alert, interval, input series, eval time, expected alerts)``: firing cases.
FIRING: List[Tuple[str, str, List[Dict[str, str]], str, List[Dict[str, Any]]]] = [
    ("JobMetricsTasksFailing", "1m",
     [_series(TASK, {**J, "type": "gc", "status": "fail"}, "0+2x30"),
      _series(TASK, {**J, "type": "gc", "status": "success"}, "0+2x30"),
      _series(TASK, {**J, "type": "gc", "status": "stop"}, "0+50x30"),  # not counted
      _series(TASK, {**J, "type": "scan", "status": "success"}, "0+2x30")],
     "20m",
     [_alert("JobMetricsTasksFailing", {"job": "jobs", "type": "gc"}, "warning",
             "Many tasks are failing.",
             "50% of the gc tasks of jobs failed over the last 10 minutes (more than 10%).")]),
    ("JobMetricsTasksStuck", "1m",
     [_series("harbor_jobservice_running_task", {**J, "type": "scan"}, "2x60"),
      _series(TASK, {**J, "type": "scan", "status": "success"}, "5x60"),
      _series("harbor_jobservice_running_task", {**J, "type": "gc"}, "1x60"),
      _series(TASK, {**J, "type": "gc", "status": "success"}, "0+1x60")],
     "40m",
     [_alert("JobMetricsTasksStuck", {**J, "type": "scan"}, "warning",
             "Tasks are running but none finishes.",
             "2 scan tasks are running on a (jobs) and none has finished for 30m.")]),
    ("JobMetricsQueueBacklog", "1m",
     [_series("harbor_task_queue_size", {**X, "type": "REPLICATION"}, "500x30"),
      _series("harbor_task_queue_size", {**X, "type": "GC"}, "3x30"),
      _series("harbor_jobservice_queue_size", {**J, "queue": "jobs"}, "200x30")],
     "20m",
     [_alert("JobMetricsQueueBacklog", {"job": "exporter", "type": "REPLICATION"}, "warning",
             "Jobs are piling up in a queue.",
             "500 jobs wait in queue REPLICATION of exporter (more than 100 for 15 minutes)."),
      _alert("JobMetricsQueueBacklog", {**J, "queue": "jobs"}, "warning",
             "Jobs are piling up in a queue.",
             "200 jobs wait in queue jobs of jobs (more than 100 for 15 minutes).")]),
    ("JobMetricsQueueLatencyHigh", "1m",
     [_series("harbor_task_queue_latency", {**X, "queue": "default"}, "600x30"),
      _series("harbor_jobservice_queue_wait_seconds", {**J, "queue": "jobs", "quantile": "0.99"},
              "400x30"),
      _series("harbor_jobservice_queue_wait_seconds", {**J, "queue": "ok", "quantile": "0.99"},
              "4x30")],
     "20m",
     [_alert("JobMetricsQueueLatencyHigh", {"job": "exporter", "queue": "default"}, "warning",
             "Jobs wait too long in a queue.",
             "Jobs in queue default of exporter wait 10m 0s (more than 5m)."),
      _alert("JobMetricsQueueLatencyHigh", {"job": "jobs", "queue": "jobs"}, "warning",
             "Jobs wait too long in a queue.",
             "Jobs in queue jobs of jobs wait 6m 40s (more than 5m).")]),
    # A summary's quantile, and a classic histogram (every run between 600 s and 1800 s:
    # p99 = 600 + 0.99 * 1200 = 1788 s).
    ("JobMetricsTasksSlow", "1m",
     [_series("harbor_jobservice_task_process_time_seconds",
              {**J, "type": "gc", "status": "success", "quantile": "0.99"}, "900x40"),
      _series("harbor_jobservice_task_process_time_seconds",
              {**J, "type": "scan", "status": "success", "quantile": "0.99"}, "30x40"),
      _series("harbor_jobservice_task_process_time_seconds_bucket",
              {"job": "hist", "instance": "h", "type": "replication", "status": "success",
               "le": "600"}, "0x40"),
      _series("harbor_jobservice_task_process_time_seconds_bucket",
              {"job": "hist", "instance": "h", "type": "replication", "status": "success",
               "le": "1800"}, "0+10x40"),
      _series("harbor_jobservice_task_process_time_seconds_bucket",
              {"job": "hist", "instance": "h", "type": "replication", "status": "success",
               "le": "+Inf"}, "0+10x40")],
     "30m",
     [_alert("JobMetricsTasksSlow", {"job": "jobs", "type": "gc"}, "warning",
             "Tasks take longer than usual.",
             "The 99th percentile run time of gc tasks of jobs is 15m 0s (more than 10m)."),
      _alert("JobMetricsTasksSlow", {"job": "hist", "type": "replication"}, "warning",
             "Tasks take longer than usual.",
             "The 99th percentile run time of replication tasks of hist is 29m 48s "
             "(more than 10m).")]),
    ("JobMetricsExporterReadFailing", "1m",
     [_series("harbor_task_exporter_up", X, "1 0x10"),
      _series("harbor_task_exporter_up", {"job": "exporter", "instance": "f"}, "1x11")],
     "10m",
     [_alert("JobMetricsExporterReadFailing", X, "warning",
             "The exporter cannot read the job store.",
             "The exporter e (exporter) has failed to read its store for 5 minutes: "
             "queue sizes and latencies are missing.")]),
    ("JobMetricsBatchJobNotSucceeding", "1h",
     [_series("harbor_jobservice_batch_last_success_timestamp_seconds", {"job": "nightly"},
              "0x30"),
      _series("harbor_jobservice_batch_last_success_timestamp_seconds", {"job": "hourly"},
              "0+3600x30")],
     "26h",
     [_alert("JobMetricsBatchJobNotSucceeding", {"job": "nightly"}, "warning",
             "A batch job has not succeeded for too long.",
             "The batch job nightly last succeeded 1d 2h 0m 0s ago (more than 25h).")]),
    ("JobMetricsTargetDown", "1m",
     [_series("up", J, "1 1 0x20"),
      _series("harbor_jobservice_info", {**J, "node": "n"}, "1 1"),
      _series("up", X, "1 1 0x20"),
      _series("harbor_task_exporter_up", X, "1 1"),
      _series("up", {"job": "node", "instance": "other"}, "0x22")],  # not ours
     "15m",
     [_alert("JobMetricsTargetDown", J, "critical",
             "A job service or exporter cannot be scraped.",
             "Prometheus has failed to scrape a (jobs) for 5 minutes."),
      _alert("JobMetricsTargetDown", X, "critical",
             "A job service or exporter cannot be scraped.",
             "Prometheus has failed to scrape e (exporter) for 5 minutes.")]),
]

#: A healthy service and exporter over two hours: no alert may fire.
HEALTHY: List[Dict[str, str]] = [
    _series(TASK, {**J, "type": "gc", "status": "success"}, "0+10x120"),
    _series(TASK, {**J, "type": "gc", "status": "fail"}, "0+0.2x120"),  # 2 %
    # Half of the scan tasks fail, but that is one failure in 10 minutes: not enough.
    _series(TASK, {**J, "type": "scan", "status": "success"}, "0+0.1x120"),
    _series(TASK, {**J, "type": "scan", "status": "fail"}, "0+0.1x120"),
    _series(TASK, {**J, "type": "scan", "status": "stop"}, "0+1x120"),
    _series("harbor_jobservice_running_task", {**J, "type": "gc"}, "3x120"),
    _series("harbor_jobservice_running_task", {**J, "type": "scan"}, "0x120"),
    _series("harbor_jobservice_queue_size", {**J, "queue": "jobs"}, "20x120"),
    _series("harbor_jobservice_queue_wait_seconds", {**J, "queue": "jobs", "quantile": "0.99"},
            "2x120"),
    _series("harbor_jobservice_task_process_time_seconds",
            {**J, "type": "gc", "status": "success", "quantile": "0.99"}, "120x120"),
    _series("harbor_jobservice_info", {**J, "node": "n"}, "1x120"),
    _series("up", J, "1x120"),
    _series("up", X, "1x120"),
    _series("harbor_task_exporter_up", X, "1x120"),
    _series("harbor_task_queue_size", {**X, "type": "GC"}, "40x120"),
    _series("harbor_task_queue_latency", {**X, "type": "GC"}, "30x120"),
    _series("harbor_jobservice_batch_last_success_timestamp_seconds", {"job": "nightly"},
            "0+60x120"),
]


def test_promtool_test_rules(mixin_dir: Path, tmp_path: Path) -> None:
    names = [a.name for a in alerts(MixinConfig())]
    assert sorted(case[0] for case in FIRING) == sorted(names), "every alert needs a test"
    tests: List[Dict[str, Any]] = []
    for name, interval, series, at, expected in FIRING:
        tests.append({"interval": interval, "input_series": series,
                      "alert_rule_test": [{"eval_time": at, "alertname": name,
                                           "exp_alerts": expected}]})
    tests.append({"interval": "1m", "input_series": HEALTHY, "alert_rule_test": [
        {"eval_time": t, "alertname": name, "exp_alerts": []}
        for name in names for t in ("10m", "45m", "2h")]})
    spec = {"rule_files": [str(mixin_dir / "alerts.yaml")], "evaluation_interval": "1m",
            "tests": tests}
    path = tmp_path / "tests.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    proc = subprocess.run([_promtool(), "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout

    # The tests can fail: a healthy case that fires is reported.
    broken = dict(spec, tests=[{"interval": "1m", "input_series": FIRING[0][2],
                                "alert_rule_test": [{"eval_time": "20m",
                                                     "alertname": FIRING[0][0],
                                                     "exp_alerts": []}]}])
    path.write_text(json.dumps(broken))
    proc = subprocess.run([_promtool(), "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "FAILED" in proc.stdout + proc.stderr


# -- a real Prometheus scraping real services ------------------------------------------


@dataclass
class Stack:
    prometheus: str  # base URL
    config: MixinConfig
    mixin: Path

    def query(self, expr: str) -> List[Dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus rejected {expr!r}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        result: List[Dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.prometheus + path, timeout=30) as resp:
            return json.loads(resp.read())["data"]


def _serve_demo(metrics: JobMetrics) -> Tuple[Demo, Any, int]:
    from jobmetrics.exposition import _serve

    demo = Demo(metrics, workers=2, fail_rate=0.2)
    server, _ = _serve(demo.wsgi_app(), 0, "127.0.0.1")
    port = server.server_port
    for target, args in ((demo.dispatch, ()),
                         (demo.produce, (f"http://127.0.0.1:{port}",))):
        threading.Thread(target=target, args=args, daemon=True).start()
    return demo, server, port


# -- a native histogram target --------------------------------------------------------
# No endpoint of the library emits native histograms yet (SPEC: `task_duration="native"`),
# so this target serves one in the Prometheus protobuf exposition, which is how
# Prometheus ingests them: every observation is 1.5 s, in bucket 1 of schema 0, (1, 2].


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _double(number: int, value: float) -> bytes:
    return _field(number, 1, struct.pack("<d", value))


def _uint(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def _sint(number: int, value: int) -> bytes:
    return _field(number, 0, _varint((value << 1) ^ (value >> 63)))


def native_family(name: str, labels: Dict[str, str], count: int) -> bytes:
    """One length-delimited MetricFamily holding a native histogram of ``count`` 1.5 s
    observations (io.prometheus.client's metrics.proto field numbers)."""
    histogram = (_uint(1, count) + _double(2, 1.5 * count) + _sint(5, 0)
                 + _double(6, 1e-128) + _uint(7, 0)
                 + _bytes(12, _sint(1, 1) + _uint(2, 1))  # span: offset 1, length 1
                 + _sint(13, count))  # the one bucket's count (deltas from 0)
    metric = b"".join(_bytes(1, _bytes(1, k.encode()) + _bytes(2, v.encode()))
                      for k, v in labels.items()) + _bytes(7, histogram)
    family = (_bytes(1, name.encode()) + _bytes(2, b"Task run time.") + _uint(3, 4)
              + _bytes(4, metric))
    return _varint(len(family)) + family


class _NativeHandler(BaseHTTPRequestHandler):
    scrapes = 0

    def do_GET(self) -> None:
        _NativeHandler.scrapes += 1
        body = native_family("harbor_jobservice_task_process_time_seconds",
                             {"type": "gc", "status": "success"},
                             10 * _NativeHandler.scrapes)
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.google.protobuf; "
                         "proto=io.prometheus.client.MetricFamily; encoding=delimited")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = shutil.which("prometheus") or PROMETHEUS
    if not Path(binary).exists():
        pytest.skip("prometheus missing: Debian package 'prometheus' (scripts/test.sh installs it)")
    tmp = tmp_path_factory.mktemp("stack")
    config = MixinConfig()
    write(config, tmp / "mixin")

    redis = RedisServer(tmp)
    redis.start()
    stops: List[Any] = [redis.stop]
    proc = None
    try:
        r = redis.client()
        now = time.time()
        for age in (120, 30):
            enqueue(r, NS, "REPLICATION", now - age)
        enqueue(r, NS, "GARBAGE_COLLECTION", now - 5)
        lock(r, NS, "REPLICATION", "pool-a", 2)
        schedule(r, NS, "REPLICATION", now + 600)
        exp_registry = CollectorRegistry()
        exporter = RedisExporter(redis.url(), registry=exp_registry, scheduled_total=True)
        stops.append(exporter.close)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=exp_registry)
        exp_server, _ = start_http_server(0, addr="127.0.0.1", registry=exp_registry)
        stops.append(exp_server.shutdown)

        targets = {"exporter": exp_server.server_port}
        for job, kind in (("jobs-summary", "summary"), ("jobs-histogram", "histogram")):
            m = JobMetrics(registry=CollectorRegistry(), node=job, task_duration=kind,
                           http_duration=kind)
            demo, server, port = _serve_demo(m)
            stops += [demo.stop_event.set, server.shutdown]
            targets[job] = port

        native = ThreadingHTTPServer(("127.0.0.1", 0), _NativeHandler)
        threading.Thread(target=native.serve_forever, daemon=True).start()
        stops.append(native.shutdown)
        targets["jobs-native"] = native.server_port

        gateway_cm = pushgateway(tmp)
        gateway = gateway_cm.__enter__()
        stops.append(lambda: gateway_cm.__exit__(None, None, None))
        batch = JobMetrics(registry=CollectorRegistry(), node="batch", process_collectors=False)
        push = batch.push_on_exit(gateway, job="nightly-gc")
        with push, batch.track_task("gc"):
            pass
        assert push.last_error is None

        scrape = [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                  for job, port in targets.items()]
        scrape.append({"job_name": "pushgateway", "honor_labels": True,
                       "static_configs": [{"targets": [gateway]}]})
        prom_config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "mixin" / "alerts.yaml"), str(tmp / "mixin" / "rules.yaml")],
            "scrape_configs": scrape,
        }
        (tmp / "prometheus.yml").write_text(json.dumps(prom_config))
        port = free_port()
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--enable-feature=native-histograms"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("wb"),
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/-/ready", timeout=30)
        s = Stack(base, config, tmp / "mixin")
        # Enough scrapes of every target (and rule evaluations) for rates over 1m.
        deadline = time.monotonic() + 30
        while True:
            got = s.query("min(count_over_time(up[1m])) >= 6 and min(up) == 1 "
                          "and count(up) == 5")
            if got or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got, f"targets not scraped: {s.get('/api/v1/targets')}"
        yield s
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        for stop in reversed(stops):
            stop()


def _substituted(expr: str) -> str:
    # Grafana's variables as the "All" choice and the rate interval of a 1 s scrape.
    for var in ("$job", "$instance", "$type", "$exporter"):
        expr = expr.replace(var, ".*")
    return expr.replace("$__rate_interval", "1m")


def test_rules_load_and_evaluate(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = stack.get("/api/v1/rules")["groups"]
        evaluated = [r for g in groups for r in g["rules"] if r.get("lastEvaluation", "")
                     and not r["lastEvaluation"].startswith("0001")]
        if len(evaluated) == len(alerts(stack.config)) + len(rules(stack.config)):
            break
        assert time.monotonic() < deadline, "rules not evaluated"
        time.sleep(0.2)
    assert sorted(g["name"] for g in groups) == ["harbor_jobservice_alerts",
                                                 "harbor_jobservice_rules"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
           if r["health"] != "ok"]
    assert bad == []


#: Queries that find nothing on a healthy demo and exporter, and why.
EMPTY = {
    # finished_total comes from SQL stores with job history; the test's store is Redis.
    "Finished jobs",
    # The demo answers no request with a 5xx.
    "job_operation:harbor_jobservice_http_request_5xx_per_request:ratio_rate5m",
}


def test_every_query_runs_on_real_prometheus(stack: Stack) -> None:
    queries: List[Tuple[str, str]] = [(record, expr) for record, expr, _ in rules(stack.config)]
    for board in _dashboards(stack.mixin).values():
        queries += [(title, _substituted(e)) for title, e in _panel_targets(board)]
    answered = {}
    for label, expr in queries:
        answered.setdefault(label, False)
        if stack.query(expr):  # raises when Prometheus rejects it
            answered[label] = True
    empty = {label for label, ok in answered.items() if not ok}
    assert empty == EMPTY
    # Alerts: accepted (they are silent on this healthy stack, or fire; both are fine).
    for a in alerts(stack.config):
        stack.query(a.expr)
    # The variables' label_values() selectors find the jobs, instances and types.
    for board in _dashboards(stack.mixin).values():
        for name, definition in _variable_queries(board):
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", definition)
            assert match, definition
            selector, label = _substituted(match.group(1)), match.group(2)
            values = {r["metric"].get(label) for r in stack.query(selector)} - {None}
            assert values, f"{name}: {definition} finds no {label}"


def test_both_duration_kinds_answer(stack: Stack) -> None:
    # The same quantile query finds the summaries' services (the demo, the pushed batch
    # job), the classic histogram's and the native histogram's.
    expr = next(e for r, e, lab in rules(stack.config)
                if r == "job_type_quantile:harbor_jobservice_task_process_time_seconds:quantile5m"
                and lab == {"quantile": "0.99"})
    jobs = {r["metric"]["job"] for r in stack.query(expr)}
    assert jobs == {"jobs-summary", "jobs-histogram", "jobs-native", "nightly-gc"}
    # And the recorded series exist, with their quantile label.
    deadline = time.monotonic() + 20
    while True:
        got = stack.query('job_type_quantile:harbor_jobservice_task_process_time_seconds:'
                          'quantile5m{quantile="0.99"}')
        if {r["metric"]["job"] for r in got} == jobs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {r["metric"]["job"] for r in got} == jobs
    for r in got:
        assert 0 <= float(r["value"][1]) < 5  # demo jobs take at most 0.6 s


def test_every_exposed_family_is_in_a_dashboard(stack: Stack) -> None:
    exposed = set(stack.get("/api/v1/label/__name__/values"))
    config = stack.config
    ours = set()
    for name in exposed:
        if not name.startswith((config.prefix, config.exporter_prefix)):
            continue
        ours.add(re.sub(r"_(bucket|sum|count)$", "", name))
    exprs = "\n".join(e for b in _dashboards(stack.mixin).values() for _, e in _panel_targets(b))
    assert sorted(n for n in ours if not _token(n).search(exprs)) == []
    # The real endpoints expose every family the mixin names, but the ones nothing emits
    # in this stack.
    names = set(Names.of(config).all().values())
    assert names - ours == {"harbor_task_finished_total"}


def test_native_histogram_branch(stack: Stack) -> None:
    # Every observation of the native target is 1.5 s, in the bucket (1, 2].
    config = stack.config
    by_record = {(r, lab.get("quantile")): e for r, e, lab in rules(config)}
    duration = "harbor_jobservice_task_process_time_seconds"
    mean = stack.query(by_record[(f"job_type:{duration}:mean5m", None)])
    got = {r["metric"]["job"]: float(r["value"][1]) for r in mean}
    assert got["jobs-native"] == pytest.approx(1.5)
    p99 = stack.query(by_record[(f"job_type_quantile:{duration}:quantile5m", "0.99")])
    got = {r["metric"]["job"]: float(r["value"][1]) for r in p99}
    assert 1 < got["jobs-native"] <= 2
    # The native series carry no quantile label and no _bucket/_count siblings: only the
    # native branch of the query can have found them.
    assert stack.query(f'{duration}_count{{job="jobs-native"}}') == []
    assert stack.query(f'{duration}{{job="jobs-native", quantile=""}}') != []
