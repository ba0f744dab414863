"""The one HTTP server of jobmetrics: start_http_server, the exporter and the demo.

Bind errors, argument checks, idle-connection timeout, IPv6, and TLS/basic auth from an
exporter-toolkit web config file, each against the real server and a real client.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from exporter_support import RedisServer
from jobmetrics import JobMetrics, start_http_server
from jobmetrics.__main__ import main as jobmetrics_main
from servers import free_port

bcrypt = pytest.importorskip("bcrypt")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _get(url: str, auth: Optional[Tuple[str, str]] = None,
         context: Optional[ssl.SSLContext] = None) -> Tuple[int, Dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=20, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- arguments and bind errors ------------------------------------------------------------

def test_busy_port_names_the_address(m: JobMetrics, busy_port: int) -> None:
    with pytest.raises(OSError) as err:
        start_http_server(busy_port, addr="127.0.0.1", metrics=m)
    assert err.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{busy_port}" in str(err.value)
    with pytest.raises(OSError, match=f"127.0.0.1:{busy_port}"):
        m.start_http_server(busy_port, "127.0.0.1")


def test_bad_port_and_addr_are_clear_errors(m: JobMetrics) -> None:
    with pytest.raises(TypeError, match="port must be an int, got str '8001'"):
        start_http_server("8001", metrics=m)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="port must be an int, got bool"):
        start_http_server(True, metrics=m)
    with pytest.raises(ValueError, match="port must be 0-65535, got 70000"):
        start_http_server(70000, metrics=m)
    with pytest.raises(TypeError, match="addr must be a str, got int"):
        start_http_server(0, addr=127, metrics=m)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be"):
        start_http_server(0, addr="127.0.0.1", metrics=m, timeout=0)


def test_demo_on_a_busy_port_is_one_line_and_exit_2(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = jobmetrics_main(["demo", "--port", str(busy_port), "--addr", "127.0.0.1",
                            "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"jobmetrics: error: cannot listen on 127.0.0.1:{busy_port}: "
                   "Address already in use\n")


def test_version_flags() -> None:
    from jobmetrics import __version__

    for module in ("jobmetrics", "jobmetrics.exporter"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().endswith(__version__)


# -- connections --------------------------------------------------------------------------

def test_an_idle_connection_is_closed_after_the_timeout(m: JobMetrics) -> None:
    served = start_http_server(0, addr="127.0.0.1", metrics=m, timeout=0.3)
    assert served is not None
    server, _ = served
    try:
        with socket.create_connection(("127.0.0.1", server.server_port)) as idle:
            idle.settimeout(30)  # far above the server's: only the server can close it
            assert idle.recv(1) == b""
        status, _, body = _get(f"http://127.0.0.1:{server.server_port}/metrics")
        assert status == 200 and b"harbor_jobservice_info" in body
    finally:
        server.shutdown()
        server.server_close()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_address(m: JobMetrics) -> None:
    served = start_http_server(0, addr="::1", metrics=m)
    assert served is not None
    server, _ = served
    try:
        assert server.address_family == socket.AF_INET6
        status, _, body = _get(f"http://[::1]:{server.server_port}/metrics")
        assert status == 200 and b"harbor_jobservice_info" in body
        with pytest.raises(OSError, match=rf"\[::1\]:{server.server_port}"):
            start_http_server(server.server_port, addr="::1", metrics=m)
    finally:
        server.shutdown()
        server.server_close()


# -- TLS and basic auth -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made by the openssl command."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("no openssl command")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "server.crt", d / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def _hash(password: str) -> str:
    # htpasswd writes $2y$ (the exporter-toolkit's examples); bcrypt writes $2b$: the same.
    hashed: bytes = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return "$2y$" + hashed.decode()[4:]


def _web_config(path: Path, cert: Optional[Tuple[Path, Path]], users: Dict[str, str],
                **extra: object) -> Path:
    lines = []
    if cert is not None:
        lines += ["tls_server_config:", f"  cert_file: {cert[0]}", f"  key_file: {cert[1]}"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {user}: {_hash(pw)}" for user, pw in users.items()]
    for key, value in extra.items():
        lines.append(f"{key}: {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _client_context(cert: Tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert[0]))


def test_tls_and_basic_auth(m: JobMetrics, tmp_path: Path, cert: Tuple[Path, Path]) -> None:
    config = _web_config(tmp_path / "web.yml", cert, {"alice": "s3cret", "bob": "hunter2"})
    served = m.start_http_server(0, "127.0.0.1", web_config_file=str(config))
    assert served is not None
    server, _ = served
    url = f"https://127.0.0.1:{server.server_port}/metrics"
    ctx = _client_context(cert)
    try:
        status, headers, body = _get(url, ("alice", "s3cret"), ctx)
        assert status == 200 and b"harbor_jobservice_info" in body
        assert _get(url, ("bob", "hunter2"), ctx)[0] == 200
        status, headers, body = _get(url, ("alice", "wrong"), ctx)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic ")
        assert b"harbor_jobservice" not in body
        assert _get(url, ("mallory", "s3cret"), ctx)[0] == 401
        assert _get(url, None, ctx)[0] == 401
        # The 404 of other paths is behind the credentials too.
        assert _get(url.replace("/metrics", "/other"), ("alice", "s3cret"), ctx)[0] == 404
        # Plain HTTP on the TLS port gets no metrics.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(url.replace("https:", "http:"), timeout=20).read()
        # A client that does not trust the certificate refuses it.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, timeout=20, context=ssl.create_default_context())
    finally:
        server.shutdown()
        server.server_close()


def test_basic_auth_without_tls_and_a_changed_file_is_read_again(
    m: JobMetrics, tmp_path: Path
) -> None:
    config = _web_config(tmp_path / "web.yml", None, {"alice": "one"},
                         http_server_config={"headers": {"X-Content-Type-Options": "nosniff"}})
    served = start_http_server(0, addr="127.0.0.1", metrics=m, web_config_file=str(config))
    assert served is not None
    server, _ = served
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        status, headers, _ = _get(url, ("alice", "one"))
        assert status == 200
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert _get(url, ("alice", "two"))[0] == 401
        before = config.stat().st_mtime_ns
        _web_config(config, None, {"alice": "two"})
        os.utime(config, ns=(before + 10**9, before + 10**9))
        assert _get(url, ("alice", "two"))[0] == 200
        assert _get(url, ("alice", "one"))[0] == 401
        # A broken edit keeps the last good configuration (never opens the endpoint).
        config.write_text("basic_auth_users: [not, a, mapping]\n")
        os.utime(config, ns=(before + 2 * 10**9, before + 2 * 10**9))
        assert _get(url, None)[0] == 401
        assert _get(url, ("alice", "two"))[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rate_limit: {burst: 2}\n", "unsupported key 'rate_limit'"),
        ("tls_server_config: {cert_file: a.crt}\n", "tls_server_config.key_file must be"),
        ("tls_server_config: {cert: PEM, key: PEM}\n", "tls_server_config.cert is not supported"),
        ("tls_server_config: {cert_file: nope.crt, key_file: nope.key}\n",
         "cannot load cert_file"),
        ("basic_auth_users: {alice: plain}\n", "basic_auth_users.alice must be a bcrypt hash"),
        ("basic_auth_users: [alice]\n", "basic_auth_users must be a mapping"),
        ("http_server_config: {http2: false}\n", "unsupported key http_server_config.http2"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)
def test_bad_web_config_is_a_clear_value_error(
    m: JobMetrics, tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "web.yml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        start_http_server(0, addr="127.0.0.1", metrics=m, web_config_file=str(config))
    with pytest.raises(ValueError, match="No such file"):
        start_http_server(0, addr="127.0.0.1", metrics=m,
                          web_config_file=str(tmp_path / "missing.yml"))


def test_client_certificates_required(
    m: JobMetrics, tmp_path: Path, cert: Tuple[Path, Path]
) -> None:
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {cert[0]}\n  key_file: {cert[1]}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {cert[0]}\n")
    served = start_http_server(0, addr="127.0.0.1", metrics=m, web_config_file=str(config))
    assert served is not None
    server, _ = served
    url = f"https://127.0.0.1:{server.server_port}/metrics"
    try:
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            urllib.request.urlopen(url, timeout=20, context=_client_context(cert)).read()
        with_cert = _client_context(cert)
        with_cert.load_cert_chain(str(cert[0]), str(cert[1]))
        assert _get(url, None, with_cert)[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_exporter_serves_tls_and_basic_auth(
    tmp_path: Path, cert: Tuple[Path, Path], redis_server: RedisServer
) -> None:
    config = _web_config(tmp_path / "web.yml", cert, {"prom": "scrape"})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMETRICS_EXPORTER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobmetrics.exporter", "--redis-url", redis_server.url(), "--port",
         str(port), "--addr", "127.0.0.1", "--web-config-file", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = _client_context(cert)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = _get(base + "/metrics", ("prom", "scrape"), ctx)[0]
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        assert status == 200
        status, _, body = _get(base + "/", ("prom", "scrape"), ctx)
        assert status == 200 and b"harbor_task_exporter_up 1.0" in body
        assert _get(base + "/metrics", ("prom", "nope"), ctx)[0] == 401
        assert _get(base + "/other", ("prom", "scrape"), ctx)[0] == 404
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving https://127.0.0.1:{port}/metrics" in out
    assert "Traceback" not in out


def test_exporter_bad_web_config_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text("rate_limit: {burst: 2}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "jobmetrics.exporter", "--port", "0", "--addr", "127.0.0.1",
         "--web-config-file", str(config)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "unsupported key 'rate_limit'" in proc.stderr
