"""``jobmetrics-exporter``: serve the exporter's families over HTTP for Prometheus.

Every flag has an environment variable (``JOBMETRICS_EXPORTER_<FLAG>``); a flag given on
the command line wins. A bad value exits with status 2 and a message naming the flag or
variable; an unreachable store does not stop the exporter (the health families say so and
it reads again at the next scrape). ``--url`` picks the store by its scheme:
``postgresql://`` (or ``postgres://``) for the PostgreSQL layouts, ``redis://``,
``rediss://`` or ``unix://`` for Redis; ``--redis-url`` is the older spelling for Redis.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..exposition import _serve, display, metrics_app
from ..redact import redact_url
from ..settings import parse_bool
from .client import check_redis_url
from .collector import RedisExporter
from .layouts import LAYOUTS
from .postgres import SCHEMES as POSTGRES_SCHEMES
from .postgres import PostgresExporter
from .sql_layouts import SQL_LAYOUTS
from .store import StoreExporter

__all__ = ["ENV", "main", "parser"]

logger = logging.getLogger("jobmetrics.exporter")

#: Environment variable of each option (flag ``--redis-url`` -> ``redis_url``).
ENV: Dict[str, str] = {
    "url": "JOBMETRICS_EXPORTER_URL",
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
    "max_running": "JOBMETRICS_EXPORTER_MAX_RUNNING",
    "scheduled_total": "JOBMETRICS_EXPORTER_SCHEDULED_TOTAL",
    "log_level": "JOBMETRICS_EXPORTER_LOG_LEVEL",
    "web_config_file": "JOBMETRICS_EXPORTER_WEB_CONFIG_FILE",
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
    value = parse_bool(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")
    return value


_ALL_LAYOUTS = list(dict.fromkeys([*LAYOUTS, *SQL_LAYOUTS]))


def _layout(text: str) -> str:
    if text not in _ALL_LAYOUTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a layout: choose one of {', '.join(_ALL_LAYOUTS)}"
        )
    return text


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    if text.upper() not in _LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LEVELS)}")
    return text.upper()


def _queues(text: str) -> List[str]:
    return [q.strip() for q in text.split(",") if q.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message names the flag (see --help for the rest).
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """The command line parser; defaults come from the ``JOBMETRICS_EXPORTER_*`` variables."""
    p = _Parser(
        prog="jobmetrics-exporter",
        description="Expose job queues kept in Redis (gocraft/work as Harbor uses it, RQ, "
        "Celery, arq) or PostgreSQL (Harbor's task table, Procrastinate, pgqueuer, django-q2) "
        "as Harbor's harbor_task_* Prometheus families.",
        epilog="Every option can also be set by its environment variable, shown in "
        "brackets; the command line wins.",
    )
    p.add_argument("--url", default=_env("url", str, None),
                   help="the store to read: postgresql://user@host:5432/db (libpq's PG* "
                   "variables, service files and .pgpass apply) or redis://host:port/db "
                   f"[{ENV['url']}]")
    p.add_argument("--redis-url", default=_env("redis_url", str, "redis://127.0.0.1:6379/0"),
                   help="Redis to read, redis://host:port/db, when --url is not given "
                   f"[{ENV['redis_url']}]")
    p.add_argument("--layout", type=_layout, default=_env("layout", _layout, "harbor"),
                   help=f"layout: {', '.join(LAYOUTS)} (Redis); {', '.join(SQL_LAYOUTS)} "
                   f"(PostgreSQL); default harbor [{ENV['layout']}]")
    p.add_argument("--key-prefix", default=_env("key_prefix", str, None),
                   help="Redis key prefix of the layout (harbor: "
                   "{harbor_job_service_namespace}; rq: rq; celery: none; arq: none, its "
                   "key names are fixed) "
                   f"[{ENV['key_prefix']}]")
    p.add_argument("--namespace", default=_env("namespace", str, "harbor"),
                   help=f"metric namespace: <namespace>_task_* (default harbor) "
                   f"[{ENV['namespace']}]")
    p.add_argument("--queue", action="append", default=None, metavar="NAME",
                   help="a queue (job type for harbor) to read; repeatable; all discovered "
                   "ones when omitted (arq, which keeps no list of its queues: arq:queue) "
                   f"[{ENV['queue']}, comma-separated]")
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
                   help=f"longest wait for the store per scrape, seconds (default 5) "
                   f"[{ENV['timeout']}]")
    p.add_argument("--max-queues", type=_positive_int,
                   default=_env("max_queues", _positive_int, 500),
                   help=f"most queues discovered per scrape (default 500) [{ENV['max_queues']}]")
    p.add_argument("--max-pools", type=_positive_int,
                   default=_env("max_pools", _positive_int, 100),
                   help="most worker pools reported per job type, harbor layout (default "
                   f"100) [{ENV['max_pools']}]")
    p.add_argument("--max-running", type=_positive_int,
                   default=_env("max_running", _positive_int, 1000),
                   help="most due jobs per queue checked for running, arq layout (default "
                   f"1000) [{ENV['max_running']}]")
    p.add_argument("--scheduled-total", action=argparse.BooleanOptionalAction,
                   default=_env("scheduled_total", _bool, False),
                   help="also emit Harbor's name <namespace>_task_scheduled_total (a gauge "
                   f"promtool rejects) [{ENV['scheduled_total']}]")
    p.add_argument("--web-config-file", default=_env("web_config_file", str, None),
                   metavar="FILE",
                   help="TLS and basic auth from a Prometheus exporter-toolkit web config "
                   f"file (see docs/exposition.md) [{ENV['web_config_file']}]")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
        url, arg = _store_url(args, given)
        exporter: StoreExporter
        common = {"layout": args.layout, "queues": queues, "namespace": args.namespace,
                  "cache_seconds": args.cache_seconds, "timeout": args.timeout,
                  "scheduled_total": args.scheduled_total, "max_queues": args.max_queues,
                  "registry": registry}
        if url.startswith(POSTGRES_SCHEMES):
            if args.key_prefix is not None:
                raise ValueError("--key-prefix is for Redis; a PostgreSQL layout finds its "
                                 "tables through the URL's search_path")
            exporter = PostgresExporter(url, **common)
        else:
            check_redis_url(url, arg)
            exporter = RedisExporter(url, key_prefix=args.key_prefix, max_pools=args.max_pools,
                                     max_running=args.max_running, **common)
    except (ValueError, TypeError, ImportError) as exc:
        # One line, no usage text: the message names the option and the reason.
        print(f"jobmetrics-exporter: error: {exc}", file=sys.stderr)
        return 2
    # The exporter's own process, as every Prometheus exporter reports it.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        server, _ = _serve(metrics_app(registry, ("/metrics", "/")), args.port, args.addr,
                           web_config_file=args.web_config_file, name="jobmetrics-exporter")
    except (OSError, ValueError, ImportError) as exc:
        exporter.close()
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"jobmetrics-exporter: error: {message}", file=sys.stderr)
        return 2
    logger.info(
        "jobmetrics exporter: serving %s://%s/metrics, layout %s, reading %s",
        "https" if server.web and server.web.current().ssl_context else "http",
        display(args.addr, server.server_port), args.layout, redact_url(url),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    exporter.close()
    return 0


def _store_url(args: argparse.Namespace, given: Sequence[str]) -> Tuple[str, str]:
    """The store URL and the flag or variable it came from (a flag wins over a variable)."""
    url_flag = any(a == "--url" or a.startswith("--url=") for a in given)
    redis_flag = any(a.startswith("--redis-url") for a in given)
    if url_flag and redis_flag:
        raise ValueError("give --url or --redis-url, not both")
    if url_flag or (args.url is not None and not redis_flag):
        arg = "--url" if url_flag else ENV["url"]
        url = str(args.url)
        if not url.startswith((*POSTGRES_SCHEMES, "redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{arg}={redact_url(url)!r} must start with postgresql://, postgres://, "
                "redis://, rediss:// or unix://"
            )
        return url, arg
    return str(args.redis_url), "--redis-url" if redis_flag else ENV["redis_url"]

