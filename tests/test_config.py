"""Construction, validation, the prefix, sharing a registry, from_env and enabled=False."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from jobmetrics import JobMetrics, default_metrics, set_default_metrics
from promcheck import samples, scrape, value

FAMILIES = (
    "http_inflight_requests", "http_request_total", "http_request_duration_seconds",
    "task_total", "task_process_time_seconds", "task_success_rate", "task_retries_total",
    "running_task",
    "pending_task", "queue_size", "info",
)


def family_names(registry: CollectorRegistry) -> set[str]:
    return {line.split()[2] for line in scrape(registry).splitlines()
            if line.startswith("# TYPE ")}


def test_default_prefix_names_every_family(m: JobMetrics, registry) -> None:
    assert m.prefix == "harbor_jobservice_"
    assert family_names(registry) == {f"harbor_jobservice_{f}" for f in FAMILIES}


def test_prefix_moves_every_family(registry) -> None:
    JobMetrics("acme", "worker", registry=registry, process_collectors=False)
    assert family_names(registry) == {f"acme_worker_{f}" for f in FAMILIES}


def test_empty_subsystem(registry) -> None:
    m = JobMetrics("acme", "", registry=registry, process_collectors=False)
    assert m.prefix == "acme_"
    assert "acme_task_total" in family_names(registry)
    assert "acme_info" in family_names(registry)


def test_custom_registry_gets_process_collectors(registry) -> None:
    JobMetrics(registry=registry)
    names = family_names(registry)
    assert "process_cpu_seconds_total" in names or "python_info" in names
    assert "python_gc_objects_collected_total" in names
    # A second prefix on the same registry does not trip over them.
    JobMetrics("other", registry=registry)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"namespace": "bad-name"}, ValueError, "namespace"),
        ({"namespace": "9lives"}, ValueError, "namespace"),
        ({"subsystem": "a b"}, ValueError, "subsystem"),
        ({"namespace": 3}, TypeError, "namespace"),
        ({"namespace": "", "subsystem": ""}, ValueError, "namespace and subsystem"),
        ({"quantiles": (0.5, 1.0)}, ValueError, "quantiles"),
        ({"quantiles": (0.5, 0.5)}, ValueError, "quantiles"),
        ({"quantiles": ("0.5",)}, TypeError, "quantiles"),
        ({"quantiles": 0.5}, TypeError, "quantiles"),
        ({"max_age": 0}, ValueError, "max_age"),
        ({"max_age": "600"}, TypeError, "max_age"),
        ({"age_buckets": 0}, ValueError, "age_buckets"),
        ({"age_buckets": 2.0}, TypeError, "age_buckets"),
        ({"relative_accuracy": 1.0}, ValueError, "relative_accuracy"),
        ({"relative_accuracy": 1e-17}, ValueError, "relative_accuracy"),
        ({"max_age": 1e-320}, ValueError, "max_age"),
        ({"success_rate_window": 1e-9}, ValueError, "success_rate_window"),
        ({"max_series": 0}, ValueError, "max_series"),
        ({"task_duration": "gauge"}, ValueError, "task_duration"),
        ({"http_duration": None}, TypeError, "http_duration"),
        ({"buckets": (1.0, 0.5)}, ValueError, "buckets"),
        ({"buckets": ()}, ValueError, "buckets"),
        ({"success_rate_window": -1}, ValueError, "success_rate_window"),
        ({"workers": -1}, ValueError, "workers"),
        ({"port": 70000}, ValueError, "port"),
        ({"path": "metrics"}, ValueError, "path"),
        ({"enabled": "yes"}, TypeError, "enabled"),
        ({"registry": object()}, TypeError, "registry"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, error, argument, registry) -> None:  # type: ignore[no-untyped-def]
    kwargs.setdefault("registry", registry)
    with pytest.raises(error, match=argument):
        JobMetrics(**kwargs)


def test_second_instance_with_equal_settings_shares_families(registry) -> None:
    a = JobMetrics(registry=registry, process_collectors=False)
    b = JobMetrics(registry=registry, process_collectors=False)
    with a.track_task("gc"):
        pass
    with b.track_task("gc"):
        pass
    assert value(registry, "harbor_jobservice_task_total", type="gc", status="success") == 2.0


def test_second_instance_with_other_settings_is_a_clear_error(registry) -> None:
    JobMetrics(registry=registry, process_collectors=False)
    with pytest.raises(ValueError, match="already exists on this registry with different"):
        JobMetrics(registry=registry, quantiles=(0.5,), process_collectors=False)
    JobMetrics("acme", registry=registry, quantiles=(0.5,), process_collectors=False)


def test_name_taken_by_another_collector_is_a_clear_error(registry) -> None:
    Counter("harbor_jobservice_task", "mine", registry=registry)
    with pytest.raises(ValueError, match="another collector on this registry"):
        JobMetrics(registry=registry, process_collectors=False)


def test_histogram_durations(registry) -> None:
    m = JobMetrics(registry=registry, task_duration="histogram", buckets=(0.1, 1.0),
                   process_collectors=False)
    with m.track_task("t"):
        pass
    got = samples(scrape(registry))
    name = "harbor_jobservice_task_process_time_seconds"
    key = (("status", "success"), ("type", "t"))
    assert got[(name + "_bucket", (("le", "0.1"), *key))] == 1.0
    assert got[(name + "_bucket", (("le", "1.0"), *key))] == 1.0
    assert got[(name + "_bucket", (("le", "+Inf"), *key))] == 1.0
    assert got[(name + "_count", key)] == 1.0
    assert "# TYPE harbor_jobservice_task_process_time_seconds histogram" in scrape(registry)


def test_info_family(registry) -> None:
    m = JobMetrics(registry=registry, node="node-1", pool="p0", workers=4,
                   process_collectors=False)
    assert value(registry, "harbor_jobservice_info", node="node-1", pool="p0",
                 workers="4") == 1.0
    m.set_info(pool="p1", workers=8)
    assert value(registry, "harbor_jobservice_info", node="node-1", pool="p1",
                 workers="8") == 1.0
    with pytest.raises(ValueError, match="workers"):
        m.set_info(workers=-2)


def test_disabled_is_a_pass_through(registry) -> None:
    m = JobMetrics(registry=registry, enabled=False)

    def f(x: int) -> int:
        return x

    assert m.task(f) is f
    assert m.task("t")(f) is f
    with m.track_task("t") as handle:
        assert handle.type is None
    assert m.http is None and m.queue_sizes is None and m.task_series("t") is None
    assert scrape(registry) == ""
    assert m.start_http_server(0, "127.0.0.1") is None


def test_from_env(registry) -> None:
    env = {
        "JOBMETRICS_NAMESPACE": "acme",
        "JOBMETRICS_SUBSYSTEM": "jobs",
        "JOBMETRICS_PORT": "9191",
        "JOBMETRICS_ADDR": "127.0.0.1",
        "JOBMETRICS_PATH": "/prom",
        "JOBMETRICS_ENABLED": "yes",
    }
    m = JobMetrics.from_env(env, registry=registry, process_collectors=False)
    assert (m.prefix, m.port, m.addr, m.path, m.enabled) == (
        "acme_jobs_", 9191, "127.0.0.1", "/prom", True)
    off = JobMetrics.from_env({"JOBMETRICS_ENABLED": "off"}, registry=registry)
    assert off.enabled is False
    # Keyword arguments win over the environment.
    kw = JobMetrics.from_env(env, registry=registry, namespace="kw", process_collectors=False)
    assert kw.prefix == "kw_jobs_"


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch, registry) -> None:
    monkeypatch.setenv("JOBMETRICS_SUBSYSTEM", "fromenv")
    assert JobMetrics.from_env(registry=registry, process_collectors=False).prefix == (
        "harbor_fromenv_")


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("JOBMETRICS_ENABLED", "maybe"),
        ("JOBMETRICS_PORT", "http"),
        ("JOBMETRICS_PORT", "-1"),
        ("JOBMETRICS_NAMESPACE", "a-b"),
        ("JOBMETRICS_SUBSYSTEM", "1x"),
        ("JOBMETRICS_PATH", "metrics"),
    ],
)
def test_from_env_bad_value_names_the_variable(var: str, raw: str, registry) -> None:
    with pytest.raises(ValueError, match=var):
        JobMetrics.from_env({var: raw}, registry=registry)


def test_default_instance(monkeypatch: pytest.MonkeyPatch, registry) -> None:
    mine = JobMetrics(registry=registry, process_collectors=False)
    set_default_metrics(mine)
    try:
        assert default_metrics() is mine
    finally:
        set_default_metrics(None)
    monkeypatch.setenv("JOBMETRICS_ENABLED", "false")
    try:
        fresh = default_metrics()
        assert fresh is not mine and fresh.enabled is False
        assert default_metrics() is fresh
    finally:
        set_default_metrics(None)
    with pytest.raises(TypeError, match="metrics"):
        set_default_metrics("m")  # type: ignore[arg-type]


def test_repr(registry) -> None:
    assert repr(JobMetrics(registry=registry, enabled=False)) == (
        "JobMetrics(namespace='harbor', subsystem='jobservice', enabled=False)")


def test_other_settings_error_names_each_difference(registry) -> None:
    JobMetrics(registry=registry, process_collectors=False, max_age=60.0)
    with pytest.raises(ValueError) as info:
        JobMetrics(registry=registry, process_collectors=False, max_age=30.0,
                   task_duration="histogram")
    message = str(info.value)
    assert "max_age=30.0 (the first has 60.0)" in message
    assert "task_duration='histogram' (the first has 'summary')" in message
    assert "quantiles" not in message


def test_ignored_arguments_warn(registry) -> None:
    with pytest.warns(UserWarning, match="buckets= is ignored with summary durations"):
        JobMetrics(registry=CollectorRegistry(), process_collectors=False, buckets=(1.0, 2.0))
    JobMetrics(registry=registry, process_collectors=False, pool="p0", workers=4)
    with pytest.warns(UserWarning, match="pool='p1', workers='8' ignored"):
        JobMetrics(registry=registry, process_collectors=False, pool="p1", workers=8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JobMetrics(registry=registry, process_collectors=False)  # nothing given: no warning
        JobMetrics(registry=CollectorRegistry(), process_collectors=False,
                   task_duration="histogram", buckets=(1.0, 2.0))
