"""``JobMetrics``: the families of one job service on one registry, and their collector."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Optional,
    Tuple,
    TypeVar,
    Union,
    overload,
)
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry
from typing_extensions import Unpack

from . import exposition, multiprocess
from .exposition import DEFAULT_TIMEOUT, ServeOptions
from .push import PushOnExit
from .service import Service
from .settings import (
    DEFAULT_BUCKETS,
    DEFAULT_QUANTILES,
    Settings,
    check_int,
    check_name_part,
    check_str,
    parse_bool,
    parse_port,
)
from .state import HttpState, QueueSizes, QueueWaits, TaskState
from .tasks import TaskHandle, instrument

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .asyncio_workers import WorkerPool

__all__ = [
    "JobMetrics",
    "default_metrics",
    "make_asgi_app",
    "make_wsgi_app",
    "resolve_metrics",
    "set_default_metrics",
    "start_http_server",
]

F = TypeVar("F", bound=Callable[..., Any])
#: A queue or executor: the instrumented proxy passes for one (``isinstance`` holds).
Q = TypeVar("Q")
EX = TypeVar("EX", bound="Executor")



# One Service per (registry, prefix): a second JobMetrics with equal settings shares it.
_shared: weakref.WeakKeyDictionary[CollectorRegistry, Dict[str, Service]] = (
    weakref.WeakKeyDictionary()
)
_process_registries: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_shared_lock = threading.Lock()


def _attach(
    registry: CollectorRegistry, settings: Settings, node: str, pool: str, workers: int,
    process_collectors: bool,
) -> Service:
    with _shared_lock:
        by_prefix = _shared.setdefault(registry, {})
        families = by_prefix.get(settings.prefix)
        if families is not None:
            if families.settings != settings:
                differ = ", ".join(
                    f"{f.name}={getattr(settings, f.name)!r} (the first has "
                    f"{getattr(families.settings, f.name)!r})"
                    for f in dataclasses.fields(Settings)
                    if getattr(settings, f.name) != getattr(families.settings, f.name))
                raise ValueError(
                    f"a JobMetrics with namespace={settings.namespace!r} and "
                    f"subsystem={settings.subsystem!r} already exists on this registry "
                    f"with different settings: {differ}; reuse that instance, or give this one "
                    "another namespace, subsystem or registry"
                )
            given = {"pool": pool, "workers": str(workers)}
            ignored = [f"{k}={v!r}" for k, v in given.items()
                       if v not in ("", "0") and families.info.get(k) != v]
            if ignored:
                warnings.warn(
                    f"JobMetrics: {', '.join(ignored)} ignored: this instance shares the "
                    "families of an earlier one on the same registry and prefix; use "
                    "set_info() to change the info labels", stacklevel=4)
            return families
        families = Service(settings, node, pool, workers)
        try:
            registry.register(families)
        except ValueError as exc:
            raise ValueError(
                f"cannot register the jobmetrics families with prefix {settings.prefix!r}: "
                f"another collector on this registry already uses some of their names ({exc}); "
                "pass another namespace/subsystem, or another registry"
            ) from None
        by_prefix[settings.prefix] = families
        if process_collectors and registry is not REGISTRY and registry not in _process_registries:
            _add_process_collectors(registry)
            _process_registries.add(registry)
        return families


def _add_process_collectors(registry: CollectorRegistry) -> None:
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    # Each may already be there if the user added it; that is fine.
    for make in (ProcessCollector, PlatformCollector, GCCollector):
        with contextlib.suppress(ValueError):
            make(registry=registry)


def _is_celery_task(obj: Any) -> bool:
    # By the class names, so that jobmetrics never imports celery itself.
    return any(
        (c.__module__, c.__name__) in (("celery.app.task", "Task"), ("celery.local", "Proxy"))
        for c in type(obj).__mro__
    )


class JobMetrics:
    """The metric families of one job service, as SPEC'd by Harbor's jobservice.

    Families are named ``{namespace}_{subsystem}_...`` (default
    ``harbor_jobservice_...``) and registered on ``registry`` (default
    ``prometheus_client.REGISTRY``, which also carries the process and platform
    collectors; a custom registry gets them added unless ``process_collectors=False``).

    A second ``JobMetrics`` on the same registry with the same namespace and subsystem
    and equal settings *shares* the families of the first (both record into the same
    series); with different settings it raises ``ValueError`` saying so.

    Args:
        namespace, subsystem: the name prefix parts (``[a-zA-Z_][a-zA-Z0-9_]*``, either
            may be empty).
        registry: where the families are registered.
        enabled: ``False`` makes every decorator, wrapper and middleware a pass-through
            that records nothing, and registers nothing.
        quantiles: quantiles of the summaries (each in (0, 1)).
        max_age, age_buckets: the sliding window of the summary quantiles, in seconds
            and in age buckets.
        relative_accuracy: the quantile sketch's guarantee: an estimate is within this
            fraction of the exact quantile's value.
        task_duration, http_duration: ``"summary"`` (quantiles), ``"histogram"``
            (``buckets``) or ``"native"`` (a Prometheus native histogram, and ``buckets``
            in a text scrape) for the two duration families.
        native_max_buckets: the most buckets a native histogram series exposes (its
            schema is lowered at scrape time until it fits).
        buckets: histogram upper bounds, in seconds.
        success_rate_window: seconds of finished tasks the success rate is computed over.
        max_series: the most task types, and the most queue names, recorded (per
            process); past it a new one is recorded as ``"overflow"``, with one warning,
            so a task type taken from user data cannot grow the scrape without bound.
        node, pool, workers: labels of the ``info`` family (node defaults to the host name).
        port, addr, path: where :meth:`start_http_server` serves (Harbor's
            ``metric: {port, path}``).
        process_collectors: add the process/platform/GC collectors to a custom registry.
        multiprocess_dir: a directory shared by the worker processes of one service:
            every family is then merged over all of them (see
            :mod:`jobmetrics.multiprocess`). Default: ``$PROMETHEUS_MULTIPROC_DIR``, as
            prometheus_client; ``""`` turns the mode off whatever the environment says.
    """

    def __init__(
        self,
        namespace: str = "harbor",
        subsystem: str = "jobservice",
        *,
        registry: Optional[CollectorRegistry] = None,
        enabled: bool = True,
        quantiles: Iterable[float] = DEFAULT_QUANTILES,
        max_age: float = 600.0,
        age_buckets: int = 5,
        relative_accuracy: float = 0.01,
        task_duration: str = "summary",
        http_duration: str = "summary",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        success_rate_window: float = 600.0,
        max_series: int = 1000,
        node: Optional[str] = None,
        pool: str = "",
        workers: int = 0,
        port: int = 8001,
        addr: str = "0.0.0.0",
        path: str = "/metrics",
        process_collectors: bool = True,
        multiprocess_dir: Optional[str] = None,
        native_max_buckets: int = 160,
    ) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        if registry is None:
            registry = REGISTRY
        elif not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client CollectorRegistry, got "
                f"{type(registry).__name__}"
            )
        directory = (os.environ.get(multiprocess.ENV_VAR, "")
                     if multiprocess_dir is None else multiprocess_dir)
        if directory and enabled:
            directory = multiprocess.check_directory(directory)
            # Process metrics of whichever worker answers a scrape would mislead.
            process_collectors = False
        self.settings = Settings(
            namespace=namespace,
            subsystem=subsystem,
            quantiles=_as_tuple(quantiles),
            max_age=max_age,
            age_buckets=age_buckets,
            relative_accuracy=relative_accuracy,
            task_duration=task_duration,
            http_duration=http_duration,
            buckets=_as_tuple(buckets),
            success_rate_window=success_rate_window,
            max_series=max_series,
            multiprocess_dir=directory,
            native_max_buckets=native_max_buckets,
        )
        if (self.settings.buckets != DEFAULT_BUCKETS
                and self.settings.task_duration == self.settings.http_duration == "summary"):
            warnings.warn(
                "JobMetrics: buckets= is ignored with summary durations; give "
                "task_duration='histogram' and/or http_duration='histogram' to use them",
                stacklevel=2)
        node = socket.gethostname() if node is None else check_str("node", node)
        check_str("pool", pool)
        check_int("workers", workers, 0)
        self.port = check_int("port", port, 0, 65535)
        self.addr = check_str("addr", addr)
        self.path = _check_path("path", path)
        self.registry = registry
        self.enabled = enabled
        self._service: Optional[Service] = (
            _attach(registry, self.settings, node, pool, workers, process_collectors)
            if enabled
            else None
        )

    def __repr__(self) -> str:
        state = "" if self.enabled else ", enabled=False"
        return (
            f"JobMetrics(namespace={self.settings.namespace!r}, "
            f"subsystem={self.settings.subsystem!r}{state})"
        )

    @property
    def prefix(self) -> str:
        """The common prefix of every family name, e.g. ``"harbor_jobservice_"``."""
        return self.settings.prefix

    # -- configuration -------------------------------------------------------------

    @classmethod
    def from_env(
        cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any
    ) -> JobMetrics:
        """Build from ``JOBMETRICS_*`` environment variables (Harbor's ``metric:`` block).

        Reads ``JOBMETRICS_ENABLED`` (true/false, 1/0, yes/no, on/off),
        ``JOBMETRICS_NAMESPACE``, ``JOBMETRICS_SUBSYSTEM``, ``JOBMETRICS_PORT``,
        ``JOBMETRICS_ADDR`` and ``JOBMETRICS_PATH``. Keyword arguments go to the
        constructor and win over the environment. A bad value raises ``ValueError``
        naming the variable.
        """
        env = os.environ if environ is None else environ
        found: Dict[str, Any] = {}
        raw = env.get("JOBMETRICS_ENABLED")
        if raw is not None:
            enabled = parse_bool(raw)
            if enabled is None:
                raise ValueError(
                    f"JOBMETRICS_ENABLED={raw!r} is not a boolean (use true/false, 1/0, "
                    "yes/no, on/off)"
                )
            found["enabled"] = enabled
        for var, arg in (("JOBMETRICS_NAMESPACE", "namespace"),
                         ("JOBMETRICS_SUBSYSTEM", "subsystem")):
            raw = env.get(var)
            if raw is not None:
                try:
                    found[arg] = check_name_part(var, raw)
                except ValueError as exc:
                    raise ValueError(str(exc)) from None
        raw = env.get("JOBMETRICS_PORT")
        if raw is not None:
            found["port"] = parse_port("JOBMETRICS_PORT", raw)
        raw = env.get("JOBMETRICS_ADDR")
        if raw is not None:
            found["addr"] = raw
        raw = env.get("JOBMETRICS_PATH")
        if raw is not None:
            found["path"] = _check_path("JOBMETRICS_PATH", raw)
        found.update(kwargs)
        return cls(**found)

    def set_info(self, *, pool: Optional[str] = None, workers: Optional[int] = None) -> None:
        """Change the ``pool`` and ``workers`` labels of the ``info`` family."""
        if pool is not None:
            check_str("pool", pool)
        if workers is not None:
            check_int("workers", workers, 0)
        if self._service is None:
            return
        info = dict(self._service.info)
        if pool is not None:
            info["pool"] = pool
        if workers is not None:
            info["workers"] = str(workers)
        self._service.info = info

    # -- tasks -------------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(self, task_type: Optional[str] = None, /, *, type: Optional[str] = None
             ) -> Callable[[F], F]: ...

    def task(
        self, fn_or_type: Any = None, /, *, type: Optional[str] = None
    ) -> Any:
        """Decorate a task function: ``@m.task``, ``@m.task("gc")``, ``@m.task(type="gc")``.

        Works on plain functions, ``async def``, generators, async generators, methods,
        classmethods and staticmethods. Each call (each iteration run, for generators) is
        one task of that type: running while it executes, then counted with its status
        (``success`` on return, ``fail`` on an exception, ``stop`` on cancellation or
        :class:`~jobmetrics.Stopped`) and its run time. The function keeps its name,
        signature, docstring and kind; results and exceptions pass through unchanged.
        The type defaults to the function's ``__name__``.
        """
        if fn_or_type is not None and not isinstance(fn_or_type, str):
            if type is not None:
                raise TypeError("pass the task type as task(type=...) only when decorating")
            return self._decorate(fn_or_type, None)
        if fn_or_type is not None and type is not None:
            raise TypeError("give the task type once: task('gc') or task(type='gc')")
        task_type = fn_or_type if fn_or_type is not None else type

        def decorator(fn: F) -> F:
            return self._decorate(fn, task_type)  # type: ignore[no-any-return]

        if task_type is not None:
            _check_type(task_type)
        return decorator

    def _decorate(self, fn: Any, task_type: Optional[str]) -> Any:
        plain = getattr(fn, "__func__", fn) if isinstance(fn, (classmethod, staticmethod)) else fn
        if not callable(plain):
            raise TypeError(f"task() decorates a callable, got {fn!r}")
        if isinstance(plain, type):
            # Each call would be the constructor, counted as a task.
            raise TypeError(
                f"task() decorates a function or method, got the class {plain.__name__!r}: "
                "decorate the method that does the work (e.g. its run() or __call__)")
        if _is_celery_task(plain):
            # The worker would run the Celery task it registered, not our wrapper.
            raise TypeError(
                "task() got a Celery task: put @m.task under @app.task (or @shared_task), "
                "so that the worker runs the instrumented function"
            )
        if task_type is None:
            task_type = getattr(plain, "__name__", None)
            if not isinstance(task_type, str):
                raise TypeError(
                    f"cannot name a task type after {fn!r}: use task('a type')"
                )
        _check_type(task_type)
        if self._service is None:
            return fn
        return instrument(fn, self._service.task_state(task_type))

    def track_task(self, task_type: str) -> TaskHandle:
        """A ``with``/``async with`` block that is one task of ``task_type``.

        ``handle.mark_stopped()`` inside the block ends it as ``stop``.
        """
        _check_type(task_type)
        if self._service is None:
            return TaskHandle(None)
        return TaskHandle(self._service.task_state(task_type))

    def task_series(self, task_type: str) -> Optional[TaskState]:
        """The live state of ``task_type`` (for wrappers built on jobmetrics), or
        ``None`` when disabled."""
        _check_type(task_type)
        if self._service is None:
            return None
        return self._service.task_state(task_type)

    # -- HTTP and queues: state shared with the middleware and queue wrappers ----------

    @property
    def http(self) -> Optional[HttpState]:
        """The ``http_*`` families' state, or ``None`` when disabled."""
        return self._service.http if self._service is not None else None

    @property
    def queue_sizes(self) -> Optional[QueueSizes]:
        """The ``queue_size`` family's state, or ``None`` when disabled."""
        return self._service.queues if self._service is not None else None

    @property
    def queue_waits(self) -> Optional[QueueWaits]:
        """The ``queue_wait_seconds`` family's state, or ``None`` when disabled."""
        return self._service.queue_waits if self._service is not None else None

    def instrument_queue(
        self, q: Q, name: str, type_of: Optional[Callable[[Any], str]] = None
    ) -> Q:
        """A transparent proxy over ``q`` reporting ``queue_size{queue=name}``.

        ``q`` is a ``queue.Queue``, ``queue.SimpleQueue``, ``asyncio.Queue`` or
        ``multiprocessing`` queue (or a subclass). The size is read with ``qsize()`` at
        scrape time, so items put on the raw queue count too; the queue is held weakly.
        Items put and got through the proxy also feed ``queue_wait_seconds{queue}``, and,
        given ``type_of(item) -> task type``, ``pending_task{type}`` while they wait.
        When metrics are disabled, returns ``q`` itself. See ``docs/queues.md``.
        """
        from .queue_proxy import instrument_queue

        proxy: Q = instrument_queue(self, q, name, type_of)
        return proxy

    def instrument_executor(self, ex: EX, type: Optional[str] = None) -> EX:
        """A transparent proxy over a ``concurrent.futures`` executor: every ``submit``
        and ``map`` item is a task, pending until it starts, then running, then counted
        with its status and run time. ``type`` overrides the task type (default: the
        ``@m.task`` type of the callable, else its name). Disabled: returns ``ex``.
        See ``docs/queues.md``.
        """
        from .executors import instrument_executor

        proxy: EX = instrument_executor(self, ex, type)
        return proxy

    def worker_pool(
        self, q: Any, handler: Callable[[Any], Any], workers: int = 1,
        type: Optional[str] = None,
        on_error: Optional[Callable[[Any, BaseException], None]] = None,
    ) -> WorkerPool:
        """A :class:`jobmetrics.asyncio_workers.WorkerPool` of ``workers`` asyncio
        tasks running ``await handler(item)`` for each item of the asyncio queue ``q``.
        """
        from .asyncio_workers import WorkerPool

        return WorkerPool(self, q, handler, workers=workers, type=type, on_error=on_error)

    # -- multi-process mode ----------------------------------------------------------

    @property
    def directory(self) -> Optional[str]:
        """The multi-process directory this instance records into, or ``None`` (this
        process's memory, or disabled)."""
        return self._service.directory if self._service is not None else None

    def record_into(self, directory: str) -> bool:
        """Record into the multi-process ``directory`` from now on, as if created with
        ``multiprocess_dir=directory``: the values recorded so far move with it, and so
        do every decorator, wrapper and middleware already holding this instance's state
        and every ``JobMetrics`` sharing its families. For a worker that forks (what the
        job-framework integrations do): call it before the fork; a process forked
        earlier records into its own memory.

        Returns ``False`` (changing nothing) when disabled or already in a directory.
        ``ValueError``/``TypeError`` for a directory that is not a writable directory,
        or one another ``JobMetrics`` of this process already records into.
        """
        if self._service is None or self._service.directory is not None:
            return False
        self._service.record_into(multiprocess.check_directory(directory))
        return True

    # -- short-lived jobs ------------------------------------------------------------

    def push_on_exit(
        self,
        gateway: str,
        job: str,
        *,
        grouping_key: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = 30.0,
        handler: Optional[Callable[..., Any]] = None,
    ) -> PushOnExit:
        """Push this job's task families to a Pushgateway when a block or call ends.

        ``with m.push_on_exit("pushgateway:9091", job="nightly-gc"): run()`` or as a
        decorator. See :mod:`jobmetrics.push` for what is pushed and why. ``handler`` is
        prometheus_client's push handler (e.g. ``basic_auth_handler``) for auth or TLS.
        """
        from prometheus_client.exposition import default_handler

        return PushOnExit(self._service, gateway, job, grouping_key, timeout,
                          handler or default_handler)

    # -- exposition ----------------------------------------------------------------

    def make_wsgi_app(self) -> Callable[..., Any]:
        """A WSGI app serving this registry: text, OpenMetrics or protobuf as the
        scraper's ``Accept`` header asks, gzip and ``name[]=`` as prometheus_client's."""
        return exposition.negotiating_wsgi_app(self.registry)

    def make_asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry (as :meth:`make_wsgi_app`). In Starlette
        ``Route("/metrics", app)``, in FastAPI ``app.add_route("/metrics", app)``."""
        return exposition.asgi_app(self.registry)

    def start_http_server(
        self, port: Optional[int] = None, addr: Optional[str] = None,
        **options: Unpack[ServeOptions],
    ) -> Union[Tuple[Any, threading.Thread], None]:
        """Serve ``path`` on ``addr:port`` (defaults: this instance's) in a daemon thread.

        ``options`` (``web_config_file=``, ``timeout=``) go to
        :func:`jobmetrics.start_http_server`. Returns ``(server, thread)``;
        ``server.shutdown()`` stops it. Returns ``None`` and serves nothing when metrics
        are disabled (Harbor's ``enabled: false``).
        """
        return start_http_server(
            self.port if port is None else port,
            addr=self.addr if addr is None else addr,
            metrics=self,
            **options,
        )


def _as_tuple(values: Any) -> Any:
    # Accept any iterable of numbers; anything else goes on to Settings' checks,
    # which name the argument.
    if isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        return tuple(values)
    return values


def _check_type(task_type: object) -> None:
    check_str("task type", task_type, allow_empty=False)


def _check_path(arg: str, path: object) -> str:
    check_str(arg, path)
    assert isinstance(path, str)
    if not path.startswith("/"):
        raise ValueError(f"{arg}={path!r} must start with '/'")
    return path


_default: Optional[JobMetrics] = None
_default_lock = threading.Lock()


def default_metrics() -> JobMetrics:
    """The process-wide ``JobMetrics`` used where no ``metrics=`` is given.

    Created on first use with :meth:`JobMetrics.from_env` (so ``JOBMETRICS_*`` apply) on
    the global registry; replace it with :func:`set_default_metrics`.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = JobMetrics.from_env()
    return _default


def set_default_metrics(metrics: Optional[JobMetrics]) -> None:
    """Make ``metrics`` the process-wide default (``None``: create anew on next use)."""
    global _default
    check_metrics(metrics)
    with _default_lock:
        _default = metrics


def check_metrics(metrics: Optional[JobMetrics]) -> Optional[JobMetrics]:
    """``metrics`` unchanged, ``None`` included (for an integration that resolves the
    default later); ``TypeError`` for anything that is not a :class:`JobMetrics`."""
    if metrics is not None and not isinstance(metrics, JobMetrics):
        raise TypeError(f"metrics must be a JobMetrics, got {type(metrics).__name__}")
    return metrics


def resolve_metrics(metrics: Optional[JobMetrics]) -> JobMetrics:
    """``metrics``, or the process-wide default when ``None`` (``TypeError`` for
    anything that is not a :class:`JobMetrics`)."""
    checked = check_metrics(metrics)
    return default_metrics() if checked is None else checked


def make_wsgi_app(metrics: Optional[JobMetrics] = None) -> Callable[..., Any]:
    """A WSGI app that serves ``metrics``' registry (default: the default instance's):
    text, OpenMetrics or protobuf as the scraper's ``Accept`` header asks."""
    return resolve_metrics(metrics).make_wsgi_app()


def make_asgi_app(metrics: Optional[JobMetrics] = None) -> Callable[..., Any]:
    """An ASGI app that serves ``metrics``' registry (default: the default instance's):
    text, OpenMetrics or protobuf as the scraper's ``Accept`` header asks.

    In Starlette ``Route("/metrics", app)``, in FastAPI ``app.add_route("/metrics", app)``.
    """
    return resolve_metrics(metrics).make_asgi_app()


def start_http_server(
    port: int,
    addr: str = "0.0.0.0",
    metrics: Optional[JobMetrics] = None,
    path: Optional[str] = None,
    *,
    web_config_file: Optional[str] = None,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
) -> Optional[Tuple[WSGIServer, threading.Thread]]:
    """Serve the metrics at ``http://addr:port{path}`` from a daemon thread.

    ``addr`` defaults to ``0.0.0.0`` (every IPv4 interface, as Harbor's jobservice binds);
    give ``127.0.0.1`` to keep it on the host, or an IPv6 address (``::1``, ``::``).
    ``path`` defaults to the instance's (``/metrics``); other paths answer 404. Port 0
    picks a free port: read it from ``server.server_port``. ``web_config_file`` turns on
    TLS and/or basic auth from a Prometheus exporter-toolkit web config file.
    ``timeout`` (seconds) closes a connection idle that long. A port that cannot be bound
    raises ``OSError`` naming ``addr:port``.

    Returns ``(server, thread)`` (``server.shutdown()`` stops it), or ``None`` without
    serving when the metrics are disabled, as Harbor's ``metric: {enabled: false}`` turns
    the endpoint off.
    """
    m = resolve_metrics(metrics)
    exposition.check_port(port, addr)
    if not m.enabled:
        exposition.logger.info("jobmetrics: metrics disabled, not serving on %s",
                               exposition.display(addr, port))
        return None
    return exposition.serve_metrics(m.registry, port, addr, path or m.path,
                                    web_config_file=web_config_file, timeout=timeout)
