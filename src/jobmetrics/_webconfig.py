"""TLS and basic auth for the metrics endpoint, from a Prometheus exporter-toolkit web config.

The file format is the exporter-toolkit's (``--web.config.file`` of node_exporter and the
other Go exporters), so one file serves both kinds of exporter. Supported::

    tls_server_config:
      cert_file: server.crt          # PEM certificate (chain)
      key_file: server.key           # PEM private key
      client_ca_file: ca.crt         # optional: CA for client certificates
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      min_version: TLS12             # TLS10..TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hash, as htpasswd -nBC 10 prints it

The exporter-toolkit keys with no Python equivalent (``cipher_suites``, ``curve_preferences``,
``client_allowed_sans``, inline ``cert``/``key``, ``rate_limit``, ...) are refused with a
message naming them rather than silently ignored: a security setting that is not applied
must not look applied. YAML needs PyYAML and bcrypt hashes need bcrypt, both in the
``jobmetrics[web]`` extra; without PyYAML a file written as JSON (a subset of YAML) is read.

The file is read again when it or a file it names changes (checked per connection, as the
exporter-toolkit reads it per request), so a renewed certificate is picked up without a
restart; a file that no longer parses leaves the last good configuration in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

__all__ = ["WebConfig", "WebConfigSource", "load_web_config"]

logger = logging.getLogger("jobmetrics")

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
             "max_version"}
_TLS_UNSUPPORTED = {"cert", "key", "client_ca", "client_allowed_sans", "cipher_suites",
                    "prefer_server_cipher_suites", "curve_preferences"}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# A bcrypt hash checked for an unknown user, so a wrong user name costs as long as a
# wrong password (no user enumeration by timing); the exporter-toolkit does the same.
_DUMMY_HASH = b"$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
_CACHE_SIZE = 1024


@dataclass(frozen=True)
class WebConfig:
    """A parsed web config: the TLS context (or ``None``), the users and extra headers."""

    path: str
    ssl_context: Optional[ssl.SSLContext]
    users: Mapping[str, bytes]
    headers: Tuple[Tuple[str, str], ...]
    files: Tuple[str, ...] = ()
    _cache: Dict[bytes, bool] = field(default_factory=dict, compare=False, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, compare=False,
                                        repr=False)

    def check(self, authorization: Optional[str]) -> bool:
        """Whether an ``Authorization`` header value passes (always, without users)."""
        if not self.users:
            return True
        credentials = _basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        known = hashed is not None
        hashed = hashed if hashed is not None else _DUMMY_HASH
        # bcrypt costs ~70 ms at cost 10: remember the outcome per (user, hash, password).
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is None:
            import bcrypt

            try:
                cached = bool(bcrypt.checkpw(password.encode(), hashed))
            except ValueError:
                cached = False
            with self._cache_lock:
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = cached
        return known and cached


def _basic(authorization: Optional[str]) -> Optional[Tuple[str, str]]:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _read(path: str) -> object:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError:
            raise ImportError(
                f"web config file {path}: reading YAML needs PyYAML "
                "(pip install 'jobmetrics[web]'), or write the file as JSON"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"web config file {path}: not valid YAML: {exc}") from None


def _mapping(value: object, where: str) -> Dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where} must be a mapping")
    return dict(value)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty string")
    return value


def _relative(path: str, base: str) -> str:
    # The exporter-toolkit resolves file names against the config file's directory.
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(base), path)


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config file at ``path``; raise ``ValueError`` naming the
    bad key (or ``ImportError`` naming the missing extra)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"web_config_file must be a path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    try:
        raw = _read(path)
    except OSError as exc:
        raise ValueError(f"web config file {path}: {exc.strerror or exc}") from None
    where = f"web config file {path}"
    top = _mapping(raw, where)
    unknown = sorted(set(top) - {"tls_server_config", "http_server_config",
                                 "basic_auth_users"})
    if unknown:
        raise ValueError(f"{where}: unsupported key {unknown[0]!r} (jobmetrics reads "
                         "tls_server_config, http_server_config.headers, basic_auth_users)")
    tls = _mapping(top.get("tls_server_config"), f"{where}: tls_server_config")
    files: List[str] = [path]
    context = _tls_context(tls, path, files) if tls else None
    http = _mapping(top.get("http_server_config"), f"{where}: http_server_config")
    extra = sorted(set(http) - {"headers"})
    if extra:
        raise ValueError(f"{where}: unsupported key http_server_config.{extra[0]}")
    headers = _mapping(http.get("headers"), f"{where}: http_server_config.headers")
    header_pairs = tuple((k, _string(v, f"{where}: http_server_config.headers.{k}"))
                         for k, v in headers.items())
    users = _users(_mapping(top.get("basic_auth_users"), f"{where}: basic_auth_users"), where)
    return WebConfig(path=path, ssl_context=context, users=users, headers=header_pairs,
                     files=tuple(files))


def _tls_context(tls: Dict[str, object], path: str, files: List[str]) -> ssl.SSLContext:
    where = f"web config file {path}: tls_server_config"
    for key in sorted(tls):
        if key in _TLS_UNSUPPORTED:
            raise ValueError(f"{where}.{key} is not supported by jobmetrics (use files: "
                             "cert_file, key_file, client_ca_file)")
        if key not in _TLS_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}")
    cert = _relative(_string(tls.get("cert_file"), f"{where}.cert_file"), path)
    key = _relative(_string(tls.get("key_file"), f"{where}.key_file"), path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        text = tls.get(name, default)
        if text not in _VERSIONS:
            raise ValueError(f"{where}.{name} must be one of {', '.join(_VERSIONS)}, "
                             f"got {text!r}")
        versions[name] = _VERSIONS[str(text)]
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{where}: cannot load cert_file {cert} / key_file {key}: "
                         f"{exc}") from None
    files += [cert, key]
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise ValueError(f"{where}.client_auth_type must be one of {', '.join(_CLIENT_AUTH)}"
                         f", got {auth!r}")
    context.verify_mode = _CLIENT_AUTH[str(auth)]
    ca = tls.get("client_ca_file")
    if ca is not None:
        ca_path = _relative(_string(ca, f"{where}.client_ca_file"), path)
        try:
            context.load_verify_locations(ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{where}: cannot load client_ca_file {ca_path}: {exc}") from None
        files.append(ca_path)
    elif context.verify_mode != ssl.CERT_NONE:
        raise ValueError(f"{where}: client_auth_type {auth} needs client_ca_file")
    return context


def _users(raw: Dict[str, object], where: str) -> Dict[str, bytes]:
    users: Dict[str, bytes] = {}
    for user, hashed in raw.items():
        text = _string(hashed, f"{where}: basic_auth_users.{user}")
        if not text.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"{where}: basic_auth_users.{user} must be a bcrypt hash "
                             "($2y$..., as htpasswd -nBC 10 prints it)")
        users[user] = text.encode()
    if users:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise ImportError(f"{where}: basic_auth_users needs bcrypt "
                              "(pip install 'jobmetrics[web]')") from None
    return users


def _stamp(files: Tuple[str, ...]) -> Tuple[Tuple[int, int], ...]:
    stamps = []
    for name in files:
        try:
            st = os.stat(name)
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((-1, -1))
    return tuple(stamps)


class WebConfigSource:
    """The current :class:`WebConfig` of a file, read again when a file it names changes."""

    def __init__(self, path: str) -> None:
        self._config = load_web_config(path)
        self._stamp = _stamp(self._config.files)
        self._lock = threading.Lock()
        self._failed: Optional[str] = None

    def current(self) -> WebConfig:
        """The configuration in force (the last one that loaded)."""
        config = self._config
        stamp = _stamp(config.files)
        if stamp == self._stamp:
            return config
        with self._lock:
            if self._config is not config:
                return self._config
            try:
                fresh = load_web_config(config.path)
            except (ValueError, ImportError) as exc:
                if str(exc) != self._failed:
                    self._failed = str(exc)
                    logger.error("jobmetrics: %s; keeping the previous web config", exc)
                self._stamp = stamp
                return config
            self._failed = None
            self._config, self._stamp = fresh, _stamp(fresh.files)
            return fresh
