"""Native histograms: placement by the schema's rule, the protobuf exposition (decoded
field by field by tests/protodecode.py), negotiation on every endpoint, exact merging of
processes, and a real Prometheus 2.42 (`--enable-feature=native-histograms`) computing
fleet-wide quantiles from two instances, one of them several processes."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import multiprocessing
import random
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.parser import text_string_to_metric_families

from jobmetrics import JobMetrics, make_asgi_app, make_wsgi_app, start_http_server
from jobmetrics.protobuf import CONTENT_TYPE, encode, wants_protobuf
from jobmetrics.schemas import accuracy, index, schema_for
from jobmetrics.sketch import QuantileSketch
from promcheck import promtool_check, scrape
from protodecode import Family, Histogram, decode
from servers import free_port, wait_http

P = "harbor_jobservice_"
WAIT = P + "queue_wait_seconds"
PROM_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
               "encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,"
               "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
CTX = multiprocessing.get_context("fork")


def native(**kw: Any) -> JobMetrics:
    return JobMetrics(registry=CollectorRegistry(), task_duration="native",
                      http_duration="native", process_collectors=False, **kw)


def waits(m: JobMetrics, values: List[float], queue: str = "q") -> None:
    assert m.queue_waits is not None
    observe = m.queue_waits.observer(queue)
    for v in values:
        observe(v, time.perf_counter())


def families(m: JobMetrics) -> Dict[str, Family]:
    return decode(encode(m.registry.collect()))


def wait_histogram(m: JobMetrics, queue: str = "q") -> Histogram:
    fam = families(m)[WAIT]
    (series,) = [s for s in fam.series if s.labels == {"queue": queue}]
    assert series.histogram is not None
    return series.histogram


# -- placement: the spec's (base**(i-1), base**i] ----------------------------------------


def _bound(j: int, n: int) -> Fraction:
    if n <= 0 or j % (1 << n) == 0:
        return Fraction(2) ** (j << -n if n <= 0 else j >> n)
    with localcontext() as ctx:
        ctx.prec = 60
        return Fraction(Decimal(2) ** (Decimal(j) / (1 << n)))


@pytest.mark.parametrize("schema", range(-4, 9))
def test_values_on_and_next_to_a_bound_land_by_the_spec(schema: int) -> None:
    lim = 700 if schema >= 0 else 1000 >> -schema
    for j in range(-lim, lim, 7 if schema >= 0 else 1):
        exact = _bound(j, schema)
        v = float(exact)
        if not 1e-300 < v < 1e300:
            continue
        for w in (v, math.nextafter(v, 0.0), math.nextafter(v, math.inf)):
            want = j if Fraction(w) <= exact else j + 1
            if Fraction(w) <= _bound(j - 1, schema):
                want = j - 1
            assert index(w, schema) == want, (schema, j, w)
            sketch = QuantileSketch(accuracy(schema))
            assert sketch.schema == schema
            assert sketch.key(w) == (1, want)
            assert sketch.key(-w) == (-1, want)


def test_schema_for_accuracy() -> None:
    assert schema_for(0.01) == 6 and accuracy(6) == pytest.approx(0.005415, abs=1e-6)
    assert (schema_for(0.05), schema_for(0.3334), schema_for(0.9)) == (3, 0, -2)
    for a in (0.001, 0.01, 0.02, 0.1, 0.5):
        assert accuracy(schema_for(a)) <= a < accuracy(schema_for(a) - 1)
    assert schema_for(0.999999) == -4
    assert QuantileSketch().gamma == 2 ** (1 / 64)
    # 100 runs of exactly 2 s: bucket 64 of schema 6 is (2**(63/64), 2], never 2.02.
    m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
    waits(m, [2.0] * 100)
    (s,) = families(m)[WAIT].series
    assert s.quantiles == [(0.5, 2.0), (0.9, 2.0), (0.99, 2.0)]


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("kw, exc, needle", [
    ({"task_duration": "natve"}, ValueError, "task_duration must be 'summary', 'histogram' "
     "or 'native', got 'natve'"),
    ({"http_duration": 1}, TypeError, "http_duration must be"),
    ({"native_max_buckets": 0}, ValueError, "native_max_buckets must be >= 1, got 0"),
    ({"native_max_buckets": "160"}, TypeError, "native_max_buckets must be an int"),
])
def test_bad_settings_fail_at_construction(kw: Dict[str, Any], exc: type, needle: str) -> None:
    with pytest.raises(exc, match=needle.replace("(", r"\(").replace(")", r"\)")):
        JobMetrics(registry=CollectorRegistry(), **kw)


# -- the protobuf exposition, field by field -------------------------------------------


def test_native_series_field_by_field() -> None:
    m = native()
    waits(m, [0.5, 1.0, 2.0, 3.0, 0.0, -1.0])
    h = wait_histogram(m)
    assert h.schema == 6 and h.zero_threshold == 2.0 ** -128 and h.zero_count == 1
    # 0.5 = 2**-1 -> -64, 1 -> 0, 2 -> 64, 3 -> ceil(64 * log2(3)) = 102
    assert h.positive == {-64: 1, 0: 1, 64: 1, 102: 1}
    assert h.negative == {0: 1}
    assert h.count == 6 and h.sum == 5.5
    # the classic buckets of `buckets`, exact and cumulative (+Inf is sample_count)
    classic = dict(h.buckets)
    assert classic[0.005] == 2 and classic[0.5] == 3 and classic[1.0] == 4
    assert classic[2.5] == 5 and classic[5.0] == 6 and classic[3600.0] == 6
    assert len(h.buckets) == 16


def test_infinity_nan_and_tiny_values_as_client_golang_places_them() -> None:
    m = native()
    waits(m, [math.inf, math.nan, 1e-300, -2.0 ** -129, 2.0 ** -127])
    h = wait_histogram(m)
    top = index(1.7976931348623157e308, 6)
    assert top == 1024 * 64  # the largest float is in the bucket of 2**1024
    assert h.positive == {top + 1: 1, -127 * 64: 1}  # +Inf one bucket above it
    assert h.zero_count == 2 and h.negative == {}
    assert h.count == 5  # NaN counts, in no bucket (Prometheus allows count > buckets)


def test_every_family_type_in_protobuf() -> None:
    m = JobMetrics(registry=CollectorRegistry(), node="n1", pool="p", workers=2)
    reg = m.registry
    Counter("c_things", "Things.", ["k"], registry=reg).labels("a").inc(3)
    Gauge("g_level", "Level.", registry=reg).set(-2.5)
    Info("build", "Build.", registry=reg).info({"version": "1"})
    waits(m, [0.1, 0.2, 0.3])

    @m.task("gc")
    def job() -> None:
        pass

    job()
    fams = families(m)
    c = fams["c_things_total"]
    assert (c.type, c.help, [(s.labels, s.value) for s in c.series]) == (
        0, "Things.", [({"k": "a"}, 3.0)])
    assert [(s.labels, s.value) for s in fams["g_level"].series] == [({}, -2.5)]
    assert fams["g_level"].type == 1
    assert fams["build_info"].type == 1
    assert [(s.labels, s.value) for s in fams["build_info"].series] == [({"version": "1"}, 1.0)]
    info = fams[P.rstrip("_") + "_info"]
    assert info.series[0].labels == {"node": "n1", "pool": "p", "workers": "2"}
    tasks = fams[P + "task_total"]
    assert tasks.type == 0
    assert {tuple(s.labels.values()): s.value for s in tasks.series}[("gc", "success")] == 1.0
    wait = fams[WAIT]
    assert wait.type == 2
    (s,) = wait.series
    assert s.count == 3 and s.sum == pytest.approx(0.6)
    assert [q for q, _ in s.quantiles] == [0.5, 0.9, 0.99]
    # rank floor(q * 2) is the middle value each time, within the schema's accuracy
    assert [v for _, v in s.quantiles] == pytest.approx([0.2] * 3, rel=accuracy(6))
    # the process and platform collectors are there too (one format per scrape)
    assert fams["process_cpu_seconds_total"].type == 0
    assert fams["python_info"].type == 1
    # a family without samples is left out (an empty request counter)
    assert P + "http_request_total" not in fams


def test_native_max_buckets_lowers_the_schema_as_far_as_needed() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0.0, 2.0) for _ in range(5000)]
    reference = {}
    for v in values:
        reference[index(v, 6)] = reference.get(index(v, 6), 0) + 1

    def at(schema: int) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for i, n in reference.items():
            j = math.ceil(i / 2 ** (6 - schema))
            out[j] = out.get(j, 0) + n
        return out

    for limit in (160, 40, 10, 1):
        m = native(native_max_buckets=limit)
        waits(m, values)
        h = wait_histogram(m)
        assert h.schema is not None
        assert len(h.positive) <= limit or h.schema == -4
        if h.schema < 6:
            assert len(at(h.schema + 1)) > limit  # one schema finer would not fit
        assert h.positive == at(h.schema)
        assert h.count == 5000
    assert native(native_max_buckets=40) is not None


def test_text_scrape_is_a_clean_classic_histogram() -> None:
    m = native()
    waits(m, [0.003, 0.2, 7.0])

    @m.task("gc")
    def job() -> None:
        pass

    job()
    text = scrape(m.registry)
    promtool_check(text)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams[WAIT].type == "histogram"
    buckets = {s.labels["le"]: s.value for s in fams[WAIT].samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1.0 and buckets["0.25"] == 2.0 and buckets["10.0"] == 3.0
    assert fams[P + "task_process_time_seconds"].type == "histogram"


# -- multi-process: several processes merge exactly --------------------------------------


def _writer(directory: str, values: List[float]) -> None:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=directory,
                   task_duration="native")
    waits(m, values)


def _fork_writers(directory: str, chunks: List[List[float]]) -> None:
    procs = [CTX.Process(target=_writer, args=(directory, c)) for c in chunks]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0


def test_processes_merge_to_one_process_fed_all_values(tmp_path: Path) -> None:
    rng = random.Random(3)
    values = [rng.expovariate(2.0) for _ in range(3000)] + [0.0, 1.0, 2.0]
    _fork_writers(str(tmp_path), [values[i::4] for i in range(4)])
    merged = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                        task_duration="native")
    one = native()
    waits(one, values)
    a, b = wait_histogram(merged), wait_histogram(one)
    assert (a.schema, a.zero_count, a.positive, a.negative, a.count, a.buckets) == (
        b.schema, b.zero_count, b.positive, b.negative, b.count, b.buckets)
    assert a.sum == pytest.approx(b.sum)


# -- negotiation on every endpoint -------------------------------------------------------


def test_accept_header_negotiation() -> None:
    assert wants_protobuf(PROM_ACCEPT)
    assert wants_protobuf(CONTENT_TYPE)
    assert not wants_protobuf("text/plain;version=0.0.4;q=1,*/*;q=0.1")
    assert not wants_protobuf("application/openmetrics-text;version=1.0.0,"
                              + CONTENT_TYPE + ";q=0.5")
    assert not wants_protobuf("application/vnd.google.protobuf;proto=other;encoding=delimited")
    assert not wants_protobuf("")


def _wsgi_get(app: Any, headers: Dict[str, str], query: str = "") -> Tuple[Dict[str, str],
                                                                            bytes]:
    got: Dict[str, str] = {}

    def start_response(status: str, hs: List[Tuple[str, str]], exc: Any = None) -> None:
        assert status.startswith("200")
        got.update(hs)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": query,
               **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}}
    return got, b"".join(app(environ, start_response))


def test_wsgi_app_negotiates_protobuf_gzip_and_names() -> None:
    m = native()
    waits(m, [1.0])
    app = make_wsgi_app(m)
    hs, body = _wsgi_get(app, {"Accept": PROM_ACCEPT})
    assert hs["Content-Type"] == CONTENT_TYPE
    assert wait_histogram(m).positive == decode(body)[WAIT].series[0].histogram.positive  # type: ignore[union-attr]
    hs, body = _wsgi_get(app, {"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"},
                         "name[]=" + WAIT)
    assert hs["Content-Encoding"] == "gzip"
    assert list(decode(gzip.decompress(body))) == [WAIT]
    hs, body = _wsgi_get(app, {"Accept": "text/plain"})
    assert hs["Content-Type"].startswith("text/plain") and b"le=\"+Inf\"" in body


def test_asgi_app_negotiates_protobuf() -> None:
    m = native()
    waits(m, [1.0])
    app = make_asgi_app(m)
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": [(b"accept", PROM_ACCEPT.encode())]}
    asyncio.run(app(scope, receive, send))
    assert dict(sent[0]["headers"])[b"content-type"] == CONTENT_TYPE.encode()
    assert WAIT in decode(sent[1]["body"])
    sent.clear()
    scope["headers"] = [(b"accept", b"text/plain")]
    asyncio.run(app(scope, receive, send))
    headers = {k.lower(): v for k, v in sent[0]["headers"]}
    assert headers[b"content-type"].startswith(b"text/plain")


def _get(url: str, accept: str) -> Tuple[str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read()


def test_start_http_server_and_the_exporters_app_negotiate() -> None:
    from jobmetrics.exposition import _serve, metrics_app

    m = native()
    waits(m, [1.0])
    served = start_http_server(0, "127.0.0.1", m)
    assert served is not None
    server, _ = served
    exporter_server, _ = _serve(metrics_app(m.registry, ("/metrics", "/")), 0, "127.0.0.1")
    try:
        for port in (server.server_port, exporter_server.server_port):
            ctype, body = _get(f"http://127.0.0.1:{port}/metrics", PROM_ACCEPT)
            assert ctype == CONTENT_TYPE and WAIT in decode(body)
            ctype, body = _get(f"http://127.0.0.1:{port}/metrics", "text/plain")
            assert ctype.startswith("text/plain")
    finally:
        server.shutdown()
        exporter_server.shutdown()


# -- a real Prometheus -------------------------------------------------------------------


PORTS: List[int] = []  # of instances a and b, set by the fixture
CLASSIC: List[Prometheus] = []  # the Prometheus without native histograms


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> List[Dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def until(self, expr: str, want: float, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        got: List[Dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = self.query(expr)
            if got and float(got[0]["value"][1]) == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"{expr}: {got}, want {want}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Tuple[Prometheus, List[List[float]], List[JobMetrics]]]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.skip("prometheus missing: Debian package 'prometheus'")
    tmp = tmp_path_factory.mktemp("native")
    directory = tmp / "mp"
    directory.mkdir()
    a = native(node="a")
    b = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(directory),
                   task_duration="native", node="b")
    # A real task too: its fail and stop series are empty native histograms.
    a.task("gc")(lambda: None)()
    servers = [start_http_server(0, "127.0.0.1", m) for m in (a, b)]
    ports = [s[0].server_port for s in servers if s is not None]
    PORTS[:] = ports
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "jobs", "static_configs": [
                  {"targets": [f"127.0.0.1:{p}" for p in ports]}]}]}
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    procs = []
    bases = []
    # One with native histograms on; one without, which asks for text and must still
    # ingest the classic histogram.
    for name, flags in (("native", ["--enable-feature=native-histograms"]), ("classic", [])):
        port = free_port()
        procs.append(subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / name}", f"--web.listen-address=127.0.0.1:{port}",
             *flags],
            stdout=subprocess.DEVNULL, stderr=(tmp / f"{name}.log").open("wb")))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        prom = Prometheus(bases[0])
        CLASSIC[:] = [Prometheus(bases[1])]
        for base in bases:
            wait_http(base + "/-/ready", timeout=30)
        # One value each, scraped, then the data the quantiles are checked on: the rate
        # over the window is then exactly the second batch.
        waits(a, [1.0])
        _fork_writers(str(directory), [[1.0]])
        prom.until(f"histogram_count(sum({WAIT}))", 2)
        rng = random.Random(11)
        batch_a = [rng.lognormvariate(math.log(0.2), 0.8) for _ in range(3000)]
        batch_b = [rng.lognormvariate(math.log(2.0), 0.5) for _ in range(3000)]
        waits(a, batch_a)
        _fork_writers(str(directory), [batch_b[i::3] for i in range(3)])
        prom.until(f"histogram_count(sum({WAIT}))", 6002)
        CLASSIC[0].until(f"sum({WAIT}_count)", 6002)
        yield prom, [batch_a, batch_b], [a, b]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        for s in servers:
            if s is not None:
                s[0].shutdown()


def _within_bucket(est: float, values: List[float], q: float, schema: int) -> None:
    """``est`` lies in the bucket (of ``schema``) of the element Prometheus's rank
    ``q * n`` falls on, or of a neighbour of that element."""
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered)) - 1
    lo, hi = ordered[max(rank - 1, 0)], ordered[min(rank + 1, len(ordered) - 1)]
    base = 2 ** (2 ** -schema)
    assert base ** (index(lo, schema) - 1) <= est <= base ** index(hi, schema), (
        q, est, ordered[rank], schema)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_fleet_quantile_within_the_served_schemas_bucket(
        fleet: Tuple[Prometheus, List[List[float]], List[JobMetrics]], q: float) -> None:
    prom, batches, instances = fleet
    schemas = [wait_histogram(m).schema for m in instances]
    # Across the two instances: the union of everything each recorded (Prometheus
    # reduces the finer one to the coarser schema).
    (got,) = prom.query(f"histogram_quantile({q}, sum({WAIT}))")
    _within_bucket(float(got["value"][1]), [1.0, 1.0] + batches[0] + batches[1], q,
                   min(s for s in schemas if s is not None))
    # rate() of each instance scales its buckets uniformly: the quantile of the batch
    # recorded inside the window. (Across instances, rate() extrapolates each series by
    # its own scrape times, which weighs them unequally: not an exact union.)
    got = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query(
        f"histogram_quantile({q}, sum by (instance) (rate({WAIT}[1m])))")}
    for port, batch, schema in zip(PORTS, batches, schemas):
        assert schema is not None
        _within_bucket(got[f"127.0.0.1:{port}"], batch, q, schema)


def test_prometheus_ingests_native_series_within_the_limit(
        fleet: Tuple[Prometheus, List[List[float]], List[JobMetrics]]) -> None:
    prom, batches, _ = fleet
    series = prom.query(WAIT)
    assert len(series) == 2 and all("histogram" in s for s in series)
    for s in series:
        assert len(s["histogram"][1]["buckets"]) <= 160
    assert {s["metric"]["instance"] for s in series} == {
        s["metric"]["instance"] for s in prom.query("up")}
    (total,) = prom.query(f"histogram_count(sum({WAIT}))")
    assert float(total["value"][1]) == len(batches[0]) + len(batches[1]) + 2
    # no classic series beside the native one
    assert prom.query(WAIT + "_bucket") == []


def test_prometheus_without_the_feature_ingests_classic_buckets(
        fleet: Tuple[Prometheus, List[List[float]], List[JobMetrics]]) -> None:
    _, batches, _ = fleet
    (classic,) = CLASSIC
    buckets = classic.query(f"sum by (le) ({WAIT}_bucket)")
    got = {r["metric"]["le"]: float(r["value"][1]) for r in buckets}
    values = [1.0, 1.0] + batches[0] + batches[1]
    assert got["+Inf"] == len(values)
    assert got["0.25"] == sum(1 for v in values if v <= 0.25)
    assert got["2.5"] == sum(1 for v in values if v <= 2.5)
    assert classic.query(f"histogram_count(sum({WAIT}))") == []  # no native series


def test_every_family_scraped_in_protobuf(
        fleet: Tuple[Prometheus, List[List[float]], List[JobMetrics]]) -> None:
    prom, _, _ = fleet
    assert [float(r["value"][1]) for r in prom.query("up")] == [1.0, 1.0]
    (ran,) = prom.query(f"histogram_count({P}task_process_time_seconds{{status='success'}})"
                        .replace("'", '"'))
    assert float(ran["value"][1]) == 1.0
    empty = prom.query(f"histogram_count({P}task_process_time_seconds{{status='fail'}})"
                       .replace("'", '"'))
    assert [float(r["value"][1]) for r in empty] == [0.0]
    (tasks,) = prom.query(f"{P}task_total{{status='success'}}".replace("'", '"'))
    assert float(tasks["value"][1]) == 1.0
    assert len(prom.query(P.rstrip("_") + "_info")) == 2
