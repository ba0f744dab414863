"""The Redis client the exporter reads with: validated URL, short timeouts, no retries.

URLs are Harbor's forms (``make/photon/prepare/utils/configs.py`` writes them, the
jobservice and Harbor's exporter read them with ``src/lib/redis/pool.go``, the core with
``src/lib/cache/redis``): ``redis://[user][:password]@host:port/db``, ``rediss://`` (TLS),
``redis+sentinel://[user][:password]@s1:port,s2:port/master[/db]`` and
``rediss+sentinel://``, each with optional query parameters such as Harbor's own
``idle_timeout_seconds=30``; ``unix:///path/redis.sock`` too. Every parameter Harbor's
parsers accept is either used or dropped (:data:`HARBOR_PARAMETERS` says which and why);
any other one is a ``ValueError`` at construction, never a failure at every read.

``redis`` is an optional dependency (``pip install 'jobmetrics[redis]'``), imported only
when a client is made, so ``import jobmetrics`` never needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..redact import redact_url

__all__ = [
    "HARBOR_PARAMETERS",
    "RedisTarget",
    "check_redis_url",
    "close_client",
    "parse_redis_url",
    "redact_url",
    "redis_client",
]

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_SCHEME_HINT = (
    "must start with redis://, rediss://, redis+sentinel://, rediss+sentinel:// or unix:// "
    "(e.g. redis://127.0.0.1:6379/0)"
)
SENTINEL_PORT = 26379

#: What each URL parameter of Harbor's Redis parsers does here: ``"db"`` selects the
#: database (and wins over the path, as in Harbor), ``"connect"`` and ``"socket"`` lower
#: the connect and reply timeouts (never above ``timeout``), ``"tls"`` is redis-py's TLS
#: setting (``rediss`` only); the rest are dropped, for the reason given: they tune a
#: connection pool or retries, and the exporter holds one connection, reads one at a
#: time, never retries within a scrape (the next scrape is the retry), and redis-py
#: reconnects before use when the server has closed an idle connection.
HARBOR_PARAMETERS: Mapping[str, str] = {
    "db": "db",
    "dial_timeout": "connect",
    "read_timeout": "socket",
    "write_timeout": "socket",
    "idle_timeout_seconds": "dropped: idle connections (Harbor writes it)",
    "idle_timeout": "dropped: idle connections",
    "max_conn_age": "dropped: connection lifetime",
    "pool_size": "dropped: pool size",
    "pool_fifo": "dropped: pool order",
    "pool_timeout": "dropped: pool wait",
    "min_idle_conns": "dropped: idle connections",
    "max_retries": "dropped: retries",
    "min_retry_backoff": "dropped: retries",
    "max_retry_backoff": "dropped: retries",
    # redis-py's own TLS settings, for a private CA (Harbor mounts its CA instead).
    "ssl_ca_certs": "tls",
    "ssl_cert_reqs": "tls",
}
_INT_PARAMETERS = ("db", "pool_size", "min_idle_conns", "max_retries")
_BOOL_PARAMETERS = ("pool_fifo",)
_DURATION_PARAMETERS = (
    "dial_timeout", "read_timeout", "write_timeout", "idle_timeout_seconds", "idle_timeout",
    "max_conn_age", "pool_timeout", "min_retry_backoff", "max_retry_backoff",
)
_CERT_REQS = ("none", "optional", "required")
# Go's time.ParseDuration units, which Harbor's parsers accept after a plain number.
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
             "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: where to connect and with which settings."""

    scheme: str
    #: ``(host, port)`` of the server, or of each Sentinel for ``*+sentinel``.
    hosts: Tuple[Tuple[str, int], ...] = ()
    #: The Sentinel master name (``*+sentinel`` only).
    master: Optional[str] = None
    #: The socket path (``unix`` only).
    path: Optional[str] = None
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    #: Seconds, from ``dial_timeout``; None when the URL sets none (or disables it).
    connect_timeout: Optional[float] = None
    #: Seconds, the lower of ``read_timeout`` and ``write_timeout``; None when unset.
    socket_timeout: Optional[float] = None
    tls: Tuple[Tuple[str, str], ...] = ()

    @property
    def sentinel(self) -> bool:
        """True for Harbor's Sentinel forms."""
        return self.scheme.endswith("+sentinel")

    @property
    def ssl(self) -> bool:
        """True for ``rediss://`` and ``rediss+sentinel://``."""
        return self.scheme.startswith("rediss")


def _duration(name: str, text: str) -> Optional[float]:
    # As Harbor's queryOptions.duration: a whole number is seconds (<= 0 disables the
    # timeout), else a Go duration such as 30s, 1m30s or 500ms.
    try:
        seconds = int(text)
    except ValueError:
        pass
    else:
        return float(seconds) if seconds > 0 else None
    body = text[1:] if text[:1] in "+-" else text
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise ValueError(f"parameter {name}={text!r} is not a duration (30, 30s, 500ms, 1m)")
    if text.startswith("-") or total == 0:
        return None
    return total


def _parameters(query: str, scheme: str) -> Dict[str, str]:
    params: Dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"the query {query!r} is not name=value pairs") from None
    for name, text in pairs:
        if name not in HARBOR_PARAMETERS:
            known = ", ".join(sorted(HARBOR_PARAMETERS))
            raise ValueError(f"unknown parameter {name!r} (known: {known})")
        params[name] = text  # the last one wins, as in Harbor's parser
    for name, text in params.items():
        if text == "" and HARBOR_PARAMETERS[name] != "tls":
            continue  # empty means unset, as in Harbor's parser
        if name in _INT_PARAMETERS:
            try:
                if int(text) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"parameter {name}={text!r} is not a whole number") from None
        elif name in _BOOL_PARAMETERS and text not in ("true", "false", "1", "0"):
            raise ValueError(f"parameter {name}={text!r} is not true/false/1/0")
        elif name in _DURATION_PARAMETERS:
            _duration(name, text)
        elif HARBOR_PARAMETERS[name] == "tls":
            if not scheme.startswith("rediss"):
                raise ValueError(f"parameter {name} needs rediss:// (TLS)")
            if name == "ssl_cert_reqs" and text not in _CERT_REQS:
                raise ValueError(f"parameter {name}={text!r} is not one of {', '.join(_CERT_REQS)}")
    return params


def _host_port(text: str, default: int) -> Tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):  # [::1]:6379
        close = text.find("]")
        if close < 0:
            raise ValueError(f"the host {text!r} is not a host[:port]")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"the host {text!r} is not a host[:port]")
        port_text = rest[1:]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    if not host:
        raise ValueError("names no host (e.g. redis://127.0.0.1:6379/0)")
    if port_text == "":
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"is not a valid URL: the port {port_text!r} is not 1-65535")
    return host, int(port_text)


def _parse(url: str) -> RedisTarget:
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ValueError(_SCHEME_HINT)
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError("a URL fragment (#...) means nothing here")
    params = _parameters(parts.query, scheme)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username: Optional[str] = None
    password: Optional[str] = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    segments = [s for s in parts.path.split("/") if s]
    master: Optional[str] = None
    path: Optional[str] = None
    db_text = ""
    hosts: Tuple[Tuple[str, int], ...] = ()
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            raise ValueError("names no socket path (unix:///path/to/redis.sock)")
        path = unquote(parts.path)
    elif scheme.endswith("+sentinel"):
        if not hostlist:
            raise ValueError("names no Sentinel (redis+sentinel://host1:26379,host2:26379/mymaster)")
        hosts = tuple(_host_port(h, SENTINEL_PORT) for h in hostlist.split(","))
        # Harbor's path is /<master name>[/<db>].
        if not 1 <= len(segments) <= 2:
            raise ValueError(
                "the path must be /<master name>[/<db>] (redis+sentinel://host:26379/mymaster/2)"
            )
        master = unquote(segments[0])
        db_text = segments[1] if len(segments) == 2 else ""
    else:
        if not hostlist:
            raise ValueError("names no host (e.g. redis://127.0.0.1:6379/0)")
        if "," in hostlist:
            raise ValueError("names several hosts: for Sentinel use redis+sentinel://")
        hosts = (_host_port(hostlist, 6379),)
        if len(segments) > 1:
            raise ValueError(f"the path {parts.path!r} is not /<db>")
        db_text = segments[0] if segments else ""
    if db_text and not db_text.isdigit():
        # redis-py would silently ignore it and read database 0.
        raise ValueError(f"the database {db_text!r} is not a number")
    db = int(db_text) if db_text else 0
    if params.get("db"):
        db = int(params["db"])
    durations = {n: _duration(n, params[n]) for n in ("dial_timeout", "read_timeout",
                                                      "write_timeout") if params.get(n)}
    socket = [s for s in (durations.get("read_timeout"), durations.get("write_timeout")) if s]
    return RedisTarget(
        scheme=scheme,
        hosts=hosts,
        master=master,
        path=path,
        db=db,
        username=username,
        password=password,
        connect_timeout=durations.get("dial_timeout"),
        socket_timeout=min(socket) if socket else None,
        tls=tuple((n, v) for n, v in sorted(params.items()) if HARBOR_PARAMETERS[n] == "tls"),
    )


def parse_redis_url(url: object, arg: str = "redis_url") -> RedisTarget:
    """The :class:`RedisTarget` of ``url``, or a ``ValueError`` naming ``arg`` and the reason.

    The message shows the URL with its password replaced by ``***``.
    """
    if not isinstance(url, str):
        raise TypeError(f"{arg} must be a str, got {type(url).__name__}")
    try:
        return _parse(url)
    except ValueError as exc:
        raise ValueError(f"{arg}={redact_url(url)!r}: {exc}") from None


def check_redis_url(url: object, arg: str = "redis_url") -> str:
    """``url`` if it is a Redis URL this exporter can use, else a ``ValueError`` saying why.

    ``arg`` names the setting in the message (``--redis-url`` on the command line); the
    password never appears in it.
    """
    parse_redis_url(url, arg)
    assert isinstance(url, str)
    return url


def _min_timeout(timeout: float, url_value: Optional[float]) -> float:
    return timeout if url_value is None else min(timeout, url_value)


def redis_client(url: str, timeout: float) -> Any:
    """A ``redis.Redis`` for ``url`` whose every connect and reply waits at most ``timeout``.

    Retries are off: a scrape answers with a failed health sample rather than waiting
    through redis-py's backoff, and the next scrape tries again. For ``*+sentinel`` URLs
    the client asks the Sentinels for the master before each new connection (redis-py's
    Sentinel support), so it follows a failover.
    """
    target = parse_redis_url(url)
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ImportError(
            "the jobmetrics exporter needs the 'redis' package: pip install 'jobmetrics[redis]'"
        ) from None
    common: Dict[str, Any] = {
        "socket_timeout": _min_timeout(timeout, target.socket_timeout),
        "socket_connect_timeout": _min_timeout(timeout, target.connect_timeout),
        "retry": Retry(NoBackoff(), 0),
        "client_name": "jobmetrics-exporter",
    }
    tls: Dict[str, Any] = {"ssl": True, **dict(target.tls)} if target.ssl else {}
    server: Dict[str, Any] = {
        **common, **tls, "db": target.db, "username": target.username,
        "password": target.password,
    }
    if target.sentinel:
        from redis import sentinel as redis_sentinel

        # As Harbor: the credentials are the master's; Sentinels are asked without them.
        make_sentinel: Any = redis_sentinel.Sentinel  # untyped in redis-py
        sentinel = make_sentinel(list(target.hosts), sentinel_kwargs={**common, **tls})
        return sentinel.master_for(target.master, **server)
    if target.path is not None:
        return redis.Redis(unix_socket_path=target.path, **server)
    ((host, port),) = target.hosts
    return redis.Redis(host=host, port=port, **server)


def close_client(client: Any) -> None:
    """Close ``client``'s connections, and its Sentinels' for a Sentinel client."""
    clients: List[Any] = [client]
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if manager is not None:
        clients.extend(getattr(manager, "sentinels", []))
    for c in clients:
        try:
            c.close()
        except Exception:
            pass  # closing is best effort: the process may be on its way out
