"""``jobmetrics.serving.WorkerEndpoint``: what every framework integration keeps."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

import jobmetrics
from jobmetrics import JobMetrics
from jobmetrics.serving import WorkerEndpoint
from servers import free_port


def test_serves_once_and_a_taken_port_is_logged_not_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import jobmetrics._errors

    jobmetrics._errors._reported.clear()
    monkeypatch.setenv("JOBMETRICS_ADDR", "127.0.0.1")
    m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
    port = free_port()
    endpoint = WorkerEndpoint(m, port)
    assert endpoint.server is None and endpoint.directory is None
    assert endpoint.serve("test endpoint") is True
    first = endpoint.server
    assert endpoint.serve("test endpoint") is True and endpoint.server is first  # once
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"harbor_jobservice_info" in r.read()
        taken = WorkerEndpoint(m, port)  # another worker on the same port
        with caplog.at_level(logging.ERROR, logger="jobmetrics"):
            assert taken.serve("test endpoint") is False
        assert taken.server is None
        (record,) = caplog.records  # logged, once, with what went wrong
        assert "test endpoint" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)
    finally:
        assert first is not None
        first[0].shutdown()
        first[0].server_close()


def test_no_port_serves_nothing_and_metrics_resolve_on_first_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBMETRICS_PORT", raising=False)
    endpoint = WorkerEndpoint(None, None)
    assert endpoint.port is None and endpoint.serve("x") is False
    endpoint.serve_for_start(None, "x")
    assert endpoint.server is None
    assert endpoint.metrics is jobmetrics.default_metrics()
    monkeypatch.setenv("JOBMETRICS_PORT", "8123")
    assert WorkerEndpoint(None, None).port == 8123
    monkeypatch.setenv("JOBMETRICS_PORT", "http")
    with pytest.raises(ValueError, match="JOBMETRICS_PORT"):
        WorkerEndpoint(None, None)
    with pytest.raises(ValueError, match="port"):
        WorkerEndpoint(None, 70000)
    with pytest.raises(TypeError, match="metrics must be a JobMetrics"):
        WorkerEndpoint(object(), None)  # type: ignore[arg-type]
