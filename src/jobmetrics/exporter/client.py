"""The Redis client the exporter reads with: validated URL, short timeouts, no retries.

``redis`` is an optional dependency (``pip install 'jobmetrics[redis]'``), imported only
when a client is made, so ``import jobmetrics`` never needs it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["check_redis_url", "redis_client"]

_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: object, arg: str = "redis_url") -> str:
    """``url`` if it is a Redis URL this exporter can use, else a ``ValueError`` saying why.

    ``arg`` names the setting in the message (``--redis-url`` on the command line).
    """
    if not isinstance(url, str):
        raise TypeError(f"{arg} must be a str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{arg}={url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{arg}={url!r} must start with redis://, rediss:// or unix:// "
            "(e.g. redis://127.0.0.1:6379/0)"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError(f"{arg}={url!r} names no host (e.g. redis://127.0.0.1:6379/0)")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            # redis-py would silently ignore it and read database 0.
            raise ValueError(f"{arg}={url!r}: the database {db!r} is not a number")
        if port == 0:
            raise ValueError(f"{arg}={url!r}: port 0 is not a Redis port")
    elif not parts.path:
        raise ValueError(f"{arg}={url!r} names no socket path (unix:///path/to/redis.sock)")
    return url


def redis_client(url: str, timeout: float) -> Any:
    """A ``redis.Redis`` for ``url`` whose every connect and reply waits at most ``timeout``.

    Retries are off: a scrape answers with a failed health sample rather than waiting
    through redis-py's backoff, and the next scrape tries again.
    """
    check_redis_url(url)
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ImportError(
            "the jobmetrics exporter needs the 'redis' package: pip install 'jobmetrics[redis]'"
        ) from None
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="jobmetrics-exporter",
    )
