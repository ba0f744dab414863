"""``jobmetrics-exporter``: serve the exporter's families over HTTP for Prometheus.

Every flag has an environment variable (``JOBMETRICS_EXPORTER_<FLAG>``); a flag given on
the command line wins. A bad value exits with status 2 and a message naming the flag or
variable; an unreachable Redis does not stop the exporter (the health families say so and
it reads again at the next scrape).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .client import check_redis_url
from .collector import RedisExporter
from .layouts import LAYOUTS

__all__ = ["ENV", "main", "parser"]

logger = logging.getLogger("jobmetrics.exporter")

#: Environment variable of each option (flag ``--redis-url`` -> ``redis_url``).
ENV: Dict[str, str] = {
    "redis_url": "JOBMETRICS_EXPORTER_REDIS_URL",
    "layout": "JOBMETRICS_EXPORTER_LAYOUT",
    "key_prefix": "JOBMETRICS_EXPORTER_KEY_PREFIX",
    "namespace": "JOBMETRICS_EXPORTER_NAMESPACE",
    "queue": "JOBMETRICS_EXPORTER_QUEUES",
    "port": "JOBMETRICS_EXPORTER_PORT",
    "addr": "JOBMETRICS_EXPORTER_ADDR",
    "cache_seconds": "JOBMETRICS_EXPORTER_CACHE_SECONDS",
    "timeout": "JOBMETRICS_EXPORTER_TIMEOUT",
    "max_queues": "JOBMETRICS_EXPORTER_MAX_QUEUES",
    "max_pools": "JOBMETRICS_EXPORTER_MAX_POOLS",
    "scheduled_total": "JOBMETRICS_EXPORTER_SCHEDULED_TOTAL",
    "log_level": "JOBMETRICS_EXPORTER_LOG_LEVEL",
}

DEFAULT_PORT = 9400
T = TypeVar("T")


class _EnvError(ValueError):
    pass


def _env(name: str, convert: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(ENV[name])
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise _EnvError(f"{ENV[name]}={raw!r}: {exc}") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _seconds(text: str, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {bound}")
    return value


def _cache_seconds(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _timeout(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _layout(text: str) -> str:
    if text not in LAYOUTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a layout: choose one of {', '.join(LAYOUTS)}"
        )
    return text


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    if text.upper() not in _LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LEVELS)}")
    return text.upper()


def _queues(text: str) -> List[str]:
    return [q.strip() for q in text.split(",") if q.strip()]


def parser() -> argparse.ArgumentParser:
    """The command line parser; defaults come from the ``JOBMETRICS_EXPORTER_*`` variables."""
    p = argparse.ArgumentParser(
        prog="jobmetrics-exporter",
        description="Expose job queues kept in Redis (gocraft/work as Harbor uses it, RQ, "
        "Celery) as Harbor's harbor_task_* Prometheus families.",
        epilog="Every option can also be set by its environment variable, shown in "
        "brackets; the command line wins.",
    )
    p.add_argument("--redis-url", default=_env("redis_url", str, "redis://127.0.0.1:6379/0"),
                   help=f"Redis to read, redis://host:port/db [{ENV['redis_url']}]")
    p.add_argument("--layout", type=_layout, default=_env("layout", _layout, "harbor"),
                   help=f"key layout: {', '.join(LAYOUTS)} (default harbor) [{ENV['layout']}]")
    p.add_argument("--key-prefix", default=_env("key_prefix", str, None),
                   help="Redis key prefix of the layout (harbor: "
                   "{harbor_job_service_namespace}; rq: rq; celery: none) "
                   f"[{ENV['key_prefix']}]")
    p.add_argument("--namespace", default=_env("namespace", str, "harbor"),
                   help=f"metric namespace: <namespace>_task_* (default harbor) "
                   f"[{ENV['namespace']}]")
    p.add_argument("--queue", action="append", default=None, metavar="NAME",
                   help="a queue (job type for harbor) to read; repeatable; all discovered "
                   f"ones when omitted [{ENV['queue']}, comma-separated]")
    p.add_argument("--port", type=_port, default=_env("port", _port, DEFAULT_PORT),
                   help=f"HTTP port to serve /metrics on (default {DEFAULT_PORT}) "
                   f"[{ENV['port']}]")
    p.add_argument("--addr", default=_env("addr", str, "0.0.0.0"),
                   help=f"address to listen on (default 0.0.0.0) [{ENV['addr']}]")
    p.add_argument("--cache-seconds", type=_cache_seconds,
                   default=_env("cache_seconds", _cache_seconds, 0.0),
                   help="serve a successful reading for this long (Harbor's exporter: 23); "
                   f"default 0 reads at every scrape [{ENV['cache_seconds']}]")
    p.add_argument("--timeout", type=_timeout, default=_env("timeout", _timeout, 5.0),
                   help=f"longest wait for Redis per scrape, seconds (default 5) "
                   f"[{ENV['timeout']}]")
    p.add_argument("--max-queues", type=_positive_int,
                   default=_env("max_queues", _positive_int, 500),
                   help=f"most queues discovered per scrape (default 500) [{ENV['max_queues']}]")
    p.add_argument("--max-pools", type=_positive_int,
                   default=_env("max_pools", _positive_int, 100),
                   help="most worker pools reported per job type, harbor layout (default "
                   f"100) [{ENV['max_pools']}]")
    p.add_argument("--scheduled-total", action=argparse.BooleanOptionalAction,
                   default=_env("scheduled_total", _bool, False),
                   help="also emit Harbor's name <namespace>_task_scheduled_total (a gauge "
                   f"promtool rejects) [{ENV['scheduled_total']}]")
    p.add_argument("--log-level", type=_log_level, default=_env("log_level", _log_level, "INFO"),
                   help=f"{', '.join(_LEVELS)} (default INFO) [{ENV['log_level']}]")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the exporter until SIGINT/SIGTERM; returns the exit status."""
    try:
        p = parser()
    except _EnvError as exc:
        print(f"jobmetrics-exporter: error: {exc}", file=sys.stderr)
        return 2
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    queues = args.queue if args.queue is not None else _queues(os.environ.get(ENV["queue"], ""))
    registry = CollectorRegistry()
    try:
        given = sys.argv[1:] if argv is None else list(argv)
        from_flag = any(a.startswith("--redis-url") for a in given)
        check_redis_url(args.redis_url, "--redis-url" if from_flag else ENV["redis_url"])
        exporter = RedisExporter(
            args.redis_url,
            layout=args.layout,
            key_prefix=args.key_prefix,
            queues=queues,
            namespace=args.namespace,
            cache_seconds=args.cache_seconds,
            timeout=args.timeout,
            scheduled_total=args.scheduled_total,
            max_queues=args.max_queues,
            max_pools=args.max_pools,
            registry=registry,
        )
    except (ValueError, TypeError, ImportError) as exc:
        # One line, no usage text: the message names the option and the reason.
        print(f"jobmetrics-exporter: error: {exc}", file=sys.stderr)
        return 2
    # The exporter's own process, as every Prometheus exporter reports it.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        server, _ = start_http_server(args.port, addr=args.addr, registry=registry)
    except OSError as exc:
        print(f"jobmetrics-exporter: error: cannot listen on {args.addr}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    logger.info(
        "jobmetrics exporter: serving http://%s:%s/metrics, layout %s, reading %s",
        args.addr, server.server_port, args.layout, _redacted(args.redis_url),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    exporter.close()
    return 0


def _redacted(url: str) -> str:
    # Never log a password given in the URL.
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
