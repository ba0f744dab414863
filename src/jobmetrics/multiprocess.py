"""Multi-process mode: one answer for all the worker processes behind one endpoint.

gunicorn and uvicorn run several workers, Celery's prefork pool forks children, and
Prometheus scrapes just one of them per request. In multi-process mode every process
writes its values to its own memory-mapped file in a shared directory (see
:mod:`jobmetrics.mpstore`), and a scrape of any process reads all the files:

- counters, ``_sum``/``_count`` and histogram buckets are summed over every process
  that ever ran (dead ones included, so a restart loses no count);
- ``http_inflight_requests``, ``running_task``, ``pending_task`` and ``queue_size`` are
  summed over the processes alive now;
- summary quantiles come from the *merged sketches* of all processes, and the success
  rate from their merged window: the same numbers one process doing all the work gives;
- ``info`` is one series for the whole service (``workers`` defaults to the number of
  live processes).

Windows are aligned to wall-clock time (every process rotates its age buckets at the
same instants), so they merge bucket by bucket.

The files of dead processes are folded into one archive file, under a lock, by the next
scrape (or at once by :func:`mark_process_dead`, for gunicorn's ``child_exit`` hook),
so the work of a scrape grows with the live processes only, however many have come and
gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import Metric

from . import _errors
from ._errors import logger
from .durations import emit_histogram, emit_summary
from .families import new_family
from .mpstore import ValueFile, read_values
from .queues import wait_metric
from .settings import Settings
from .sketch import QuantileSketch
from .tasks import STATUSES, STOP, SUCCESS

__all__ = [
    "ENV_VAR",
    "MPHttpSeries",
    "MPTaskSeries",
    "ProcessStore",
    "child_exit",
    "mark_process_dead",
    "setup_celery",
]

#: The environment variable that switches multi-process mode on (prometheus_client's).
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "jobmetrics-"
_ARCHIVE = "jobmetrics-archive.db"
_LOCK = "jobmetrics.lock"
_LIVE_KINDS = ("running", "pending", "inflight", "queue")


def _key(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


def check_directory(directory: str) -> str:
    """An existing, writable directory, or ``ValueError`` naming the setting."""
    if not isinstance(directory, str):
        raise TypeError(f"multiprocess_dir must be a str, got {type(directory).__name__}")
    if not os.path.isdir(directory):
        raise ValueError(
            f"multiprocess_dir={directory!r} (or ${ENV_VAR}) is not a directory: create it "
            "before the workers start, empty, and remove it between runs of the service"
        )
    if not os.access(directory, os.W_OK):
        raise ValueError(f"multiprocess_dir={directory!r} is not writable")
    return directory


# flock() locks belong to the open file, which a forked child shares: a child forked
# while another thread of its parent is inside _locked (Celery forks pool children while
# the main process serves scrapes) would hold that lock for its whole life, and deadlock
# on its own next exclusive lock. So the child closes every lock descriptor it inherits,
# and the guard keeps a fork from landing between an open() and its bookkeeping.
_fork_guard = threading.Lock()
_lock_fds: set[int] = set()


@contextlib.contextmanager
def _locked(directory: str, exclusive: bool) -> Iterator[None]:
    with _fork_guard:
        fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        _lock_fds.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        with _fork_guard:
            _lock_fds.discard(fd)
            os.close(fd)  # closing releases the lock


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purpose
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _pid_of(path: str) -> Optional[int]:
    name = os.path.basename(path)
    digits = name[len(_PREFIX):-len(".db")]
    return int(digits) if digits.isdigit() else None


# ---------------------------------------------------------------------------------
# Writing


_stores: weakref.WeakSet[ProcessStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for fd in _lock_fds:  # the parent's, not ours: see _locked
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    _fork_guard.release()
    for store in list(_stores):
        store.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_guard.acquire, after_in_parent=_fork_guard.release,
                        after_in_child=_after_fork_in_child)


class _NullFile:
    """Stands in for a value file that could not be opened: writes go nowhere."""

    def offset(self, key: str) -> int:
        return 0

    def write(self, off: int, value: float) -> None:
        pass

    def set(self, key: str, value: float) -> None:
        pass


class ProcessStore:
    """This process's value file, its lock, and the series writing into it.

    After a fork the child gets a file of its own and its series start from zero, so
    nothing is counted twice (gunicorn's ``preload_app``, Celery's prefork pool).
    """

    def __init__(
        self, directory: str, queue_sizes: Optional[Callable[[], Dict[str, int]]] = None,
        publish_interval: float = 1.0,
    ) -> None:
        self.directory = check_directory(directory)
        self.lock = threading.Lock()
        self._series: List[Any] = []
        self._queue_sizes = queue_sizes
        self._published: Dict[str, int] = {}
        self._interval = publish_interval
        self._publisher: Optional[threading.Thread] = None
        self.file = self._open()
        _stores.add(self)

    def _open(self) -> ValueFile:
        self.pid = os.getpid()
        path = os.path.join(self.directory, f"{_PREFIX}{self.pid}.db")
        if os.path.exists(path):  # left by an earlier process that had our pid
            with _locked(self.directory, exclusive=True):
                _compact(self.directory, [path])
        return ValueFile(path)

    def after_fork(self) -> None:
        """Re-open for the child process and reset every series."""
        self.lock = threading.Lock()
        try:
            self.file = self._open()
        except Exception as exc:
            # Never write into the parent's mapping from the child: record nothing.
            self.file = _NullFile()  # type: ignore[assignment]
            if os.path.isdir(self.directory):  # a removed directory is nobody's to scrape
                _errors.report(f"multiprocess file in {self.directory!r} after fork", exc)
        self._published = {}
        publishing, self._publisher = self._publisher is not None, None
        for series in self._series:
            series.reset()
        if publishing:  # the parent published queue sizes; threads do not survive a fork
            self.start_publisher()

    def track(self, series: Any) -> None:
        """Reset ``series`` after a fork."""
        self._series.append(series)

    # Queue sizes belong to the process that holds the queue: it publishes them.
    def publish_queue_sizes(self) -> None:
        """Write the current size of every instrumented queue of this process."""
        if self._queue_sizes is None:
            return
        try:
            sizes = self._queue_sizes()
            with self.lock:
                for name, size in sizes.items():
                    self.file.set(_key("queue", name), float(size))
                for name in set(self._published) - set(sizes):
                    self.file.set(_key("queue", name), math.nan)  # gone
            self._published = dict(sizes)
        except Exception as exc:
            _errors.report("publish queue sizes", exc)

    def start_publisher(self) -> None:
        """Publish queue sizes every ``publish_interval`` seconds from a daemon thread."""
        if self._publisher is not None and self._publisher.is_alive():
            return
        ref = weakref.ref(self)
        interval = self._interval

        def loop() -> None:
            while True:
                time.sleep(interval)
                store = ref()
                if store is None or store.pid != os.getpid():
                    return
                store.publish_queue_sizes()
                del store

        self._publisher = threading.Thread(target=loop, name="jobmetrics-queues", daemon=True)
        self._publisher.start()


class _FileWindow:
    """Counters per age bucket, the buckets aligned to wall-clock epochs of ``width``."""

    __slots__ = ("_base", "_cells", "_epochs", "_head", "_next", "_store", "_width", "n")

    def __init__(self, store: ProcessStore, base: Tuple[object, ...], width: float, n: int
                 ) -> None:
        self._store = store
        self._base = base
        self._width = width
        self.n = n
        self.reset()

    def reset(self) -> None:
        self._epochs: List[Optional[int]] = [None] * self.n
        self._cells: List[Dict[Tuple[object, ...], List[Any]]] = [{} for _ in range(self.n)]
        self._next = 0.0
        self._head = 0

    def add(self, cell: Tuple[object, ...], wall: float) -> None:
        """Count one in ``cell`` of the bucket of time ``wall`` (caller holds the lock)."""
        if wall >= self._next:
            epoch = int(wall // self._width)
            slot = epoch % self.n
            if self._epochs[slot] != epoch:
                f = self._store.file
                for old in self._cells[slot].values():
                    old[1] = 0
                    f.write(old[0], 0.0)
                f.set(_key(*self._base, "w", slot, "e"), float(epoch))
                self._epochs[slot] = epoch
            self._head = slot
            self._next = (epoch + 1) * self._width
        cells = self._cells[self._head]
        entry = cells.get(cell)
        if entry is None:
            off = self._store.file.offset(_key(*self._base, "w", self._head, *cell))
            entry = [off, 0]
            cells[cell] = entry
        entry[1] += 1
        self._store.file.write(entry[0], float(entry[1]))


class _FileDuration:
    """A summary (count, sum, windowed sketch buckets) or a histogram in the file."""

    __slots__ = ("_base", "_bounds", "_hist", "_offs", "_sketch", "_store", "_window",
                 "count", "sum")

    def __init__(self, store: ProcessStore, base: Tuple[object, ...], settings: Settings,
                 kind: str, sketch: QuantileSketch) -> None:
        self._store = store
        self._base = base
        self._sketch = sketch
        self._bounds = settings.buckets if kind == "histogram" else None
        self._window = None if self._bounds else _FileWindow(
            store, base, settings.max_age / settings.age_buckets, settings.age_buckets)
        self.reset()

    def reset(self) -> None:
        f = self._store.file
        self.count = 0
        self.sum = 0.0
        self._offs = (f.offset(_key(*self._base, "count")), f.offset(_key(*self._base, "sum")))
        self._hist: List[List[Any]] = []
        if self._bounds is not None:
            self._hist = [[f.offset(_key(*self._base, "h", i)), 0]
                          for i in range(len(self._bounds) + 1)]
        if self._window is not None:
            self._window.reset()

    def observe(self, value: float, wall: float) -> None:
        f = self._store.file
        self.count += 1
        self.sum += value
        f.write(self._offs[0], float(self.count))
        f.write(self._offs[1], self.sum)
        if self._bounds is not None:
            entry = self._hist[bisect_left(self._bounds, value)]
            entry[1] += 1
            f.write(entry[0], float(entry[1]))
        elif self._window is not None and value == value:
            self._window.add(self._sketch.key(value), wall)


class MPTaskSeries:
    """:class:`~jobmetrics.tasks.TaskSeries` for multi-process mode: same methods,
    values written through to this process's file."""

    def __init__(self, task_type: str, settings: Settings, store: ProcessStore) -> None:
        self.type = task_type
        self._settings = settings
        self._store = store
        sketch = QuantileSketch(settings.relative_accuracy)
        self._durations = [
            _FileDuration(store, ("task", task_type, s), settings, settings.task_duration, sketch)
            for s in STATUSES
        ]
        self._ratio = _FileWindow(store, ("task", task_type, "r"),
                                  settings.success_rate_window / settings.age_buckets,
                                  settings.age_buckets)
        self.reset()
        store.track(self)

    def reset(self) -> None:
        f = self._store.file
        self.running = 0
        self.pending = 0
        self.counts = [0, 0, 0]
        self._off_running = f.offset(_key("task", self.type, "running"))
        self._off_pending = f.offset(_key("task", self.type, "pending"))
        for d in self._durations:
            d.reset()
        self._ratio.reset()

    def begin(self) -> float:
        try:
            with self._store.lock:
                self.running += 1
                self._store.file.write(self._off_running, float(self.running))
        except Exception as exc:
            _errors.report("task begin", exc)
        return perf_counter()

    def end(self, status: int, start: float) -> None:
        now = perf_counter()
        wall = time.time()
        try:
            with self._store.lock:
                self.running -= 1
                self._store.file.write(self._off_running, float(self.running))
                self.counts[status] += 1
                self._durations[status].observe(now - start, wall)
                if status != STOP:
                    self._ratio.add(("g",) if status == SUCCESS else ("b",), wall)
        except Exception as exc:
            _errors.report("task end", exc)

    def add_pending(self, n: int) -> None:
        try:
            with self._store.lock:
                self.pending += n
                self._store.file.write(self._off_pending, float(self.pending))
        except Exception as exc:
            _errors.report("task pending", exc)

    def begin_from_pending(self) -> float:
        try:
            with self._store.lock:
                self.pending -= 1
                self.running += 1
                self._store.file.write(self._off_pending, float(self.pending))
                self._store.file.write(self._off_running, float(self.running))
        except Exception as exc:
            _errors.report("task begin", exc)
        return perf_counter()

    def lock(self) -> threading.Lock:
        return self._store.lock


class MPHttpSeries:
    """:class:`~jobmetrics.http_series.HttpSeries` for multi-process mode."""

    def __init__(self, settings: Settings, store: ProcessStore) -> None:
        self._settings = settings
        self._store = store
        self._sketch = QuantileSketch(settings.relative_accuracy)
        self.reset()
        store.track(self)

    def reset(self) -> None:
        self.inflight = 0
        self._off_inflight = self._store.file.offset(_key("http", "inflight"))
        self._counts: Dict[Tuple[str, str, str], List[Any]] = {}
        self._durations: Dict[Tuple[str, str], _FileDuration] = {}

    def begin(self) -> float:
        try:
            with self._store.lock:
                self.inflight += 1
                self._store.file.write(self._off_inflight, float(self.inflight))
        except Exception as exc:
            _errors.report("http begin", exc)
        return perf_counter()

    def end(self, method: str, code: str, operation: str, start: float) -> None:
        now = perf_counter()
        wall = time.time()
        try:
            with self._store.lock:
                f = self._store.file
                self.inflight -= 1
                f.write(self._off_inflight, float(self.inflight))
                key = (method, code, operation)
                entry = self._counts.get(key)
                if entry is None:
                    entry = self._counts[key] = [f.offset(_key("req", *key)), 0]
                entry[1] += 1
                f.write(entry[0], float(entry[1]))
                dkey = (method, operation)
                dur = self._durations.get(dkey)
                if dur is None:
                    dur = self._durations[dkey] = _FileDuration(
                        self._store, ("dur", *dkey), self._settings,
                        self._settings.http_duration, self._sketch)
                dur.observe(now - start, wall)
        except Exception as exc:
            _errors.report("http end", exc)

    def lock(self) -> threading.Lock:
        return self._store.lock


class MPQueueWaits:
    """:class:`~jobmetrics.queues.QueueWaits` for multi-process mode."""

    def __init__(self, settings: Settings, store: ProcessStore) -> None:
        self._settings = settings
        self._store = store
        self._sketch = QuantileSketch(settings.relative_accuracy)
        self._series: Dict[str, _FileDuration] = {}
        store.track(self)

    def reset(self) -> None:
        for series in self._series.values():
            series.reset()

    def observer(self, name: str) -> Callable[[float, float], None]:
        """A function ``observe(seconds, now)`` recording one wait under ``name``."""
        with self._store.lock:
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _FileDuration(
                    self._store, ("qwait", name), self._settings,
                    self._settings.task_duration, self._sketch)
        store = self._store

        def observe(seconds: float, now: float) -> None:
            try:
                with store.lock:
                    series.observe(seconds, time.time())
            except Exception as exc:
                _errors.report("queue wait", exc)

        return observe


# ---------------------------------------------------------------------------------
# Reading and merging


class _DurAgg:
    __slots__ = ("count", "hist", "sum", "window")

    def __init__(self) -> None:
        self.count = 0.0
        self.sum = 0.0
        self.hist: Dict[int, float] = {}
        self.window: Dict[Tuple[int, int], float] = {}


class _Aggregate:
    """Everything read from the files, merged."""

    def __init__(self) -> None:
        self.running: Dict[str, float] = {}
        self.pending: Dict[str, float] = {}
        self.inflight = 0.0
        self.queues: Dict[str, float] = {}
        self.requests: Dict[Tuple[str, str, str], float] = {}
        self.task_durations: Dict[Tuple[str, int], _DurAgg] = {}
        self.http_durations: Dict[Tuple[str, str], _DurAgg] = {}
        self.queue_waits: Dict[str, _DurAgg] = {}
        self.ratio: Dict[str, List[float]] = {}
        self.types: set[str] = set()
        self.live = 0


def _window_slots(values: Dict[str, float]) -> Dict[Tuple[Any, ...], float]:
    """``(base..., slot) -> epoch`` of every window bucket in one file."""
    out: Dict[Tuple[Any, ...], float] = {}
    for key, v in values.items():
        if key.endswith(',"e"]'):
            parts = json.loads(key)
            if len(parts) >= 3 and parts[-3] == "w":
                out[tuple(parts[:-1])] = v
    return out


def _add_file(agg: _Aggregate, values: Dict[str, float], live: bool, settings: Settings,
              now: float) -> None:
    dur_width = settings.max_age / settings.age_buckets
    rate_width = settings.success_rate_window / settings.age_buckets
    n = settings.age_buckets
    epochs = _window_slots(values)
    status_index = {s: i for i, s in enumerate(STATUSES)}
    for key, v in values.items():
        if v != v:  # NaN: withdrawn
            continue
        parts = json.loads(key)
        kind = parts[0]
        if kind == "task":
            t = parts[1]
            agg.types.add(t)
            if parts[2] in ("running", "pending"):
                if live:
                    d = agg.running if parts[2] == "running" else agg.pending
                    d[t] = d.get(t, 0.0) + v
                continue
            if parts[2] == "r":  # ["task", t, "r", "w", slot, "g"|"b"|"e"]
                if parts[-1] == "e":
                    continue
                epoch = epochs.get(tuple(parts[:5]))
                if epoch is None or not now // rate_width - n < epoch <= now // rate_width:
                    continue
                pair = agg.ratio.setdefault(t, [0.0, 0.0])
                pair[0 if parts[5] == "g" else 1] += v
                continue
            si = status_index.get(parts[2])
            if si is None:
                continue
            dagg = agg.task_durations.setdefault((t, si), _DurAgg())
            _add_duration(dagg, parts, 3, v, epochs, dur_width, n, now)
        elif kind == "dur":
            dagg = agg.http_durations.setdefault((parts[1], parts[2]), _DurAgg())
            _add_duration(dagg, parts, 3, v, epochs, dur_width, n, now)
        elif kind == "qwait":
            dagg = agg.queue_waits.setdefault(parts[1], _DurAgg())
            _add_duration(dagg, parts, 2, v, epochs, dur_width, n, now)
        elif kind == "req":
            k3 = (parts[1], parts[2], parts[3])
            agg.requests[k3] = agg.requests.get(k3, 0.0) + v
        elif kind == "http":
            if live:
                agg.inflight += v
        elif kind == "queue" and live:
            agg.queues[parts[1]] = agg.queues.get(parts[1], 0.0) + v


def _add_duration(dagg: _DurAgg, parts: List[Any], i: int, v: float,
                  epochs: Dict[Tuple[Any, ...], float], width: float, n: int, now: float
                  ) -> None:
    what = parts[i]
    if what == "count":
        dagg.count += v
    elif what == "sum":
        dagg.sum += v
    elif what == "h":
        dagg.hist[parts[i + 1]] = dagg.hist.get(parts[i + 1], 0.0) + v
    elif what == "w" and parts[-1] != "e":
        epoch = epochs.get(tuple(parts[:i + 2]))
        if epoch is None or not now // width - n < epoch <= now // width:
            return
        cell = (parts[i + 2], parts[i + 3])
        dagg.window[cell] = dagg.window.get(cell, 0.0) + v


def _merge_for_archive(merged: Dict[str, float], values: Dict[str, float]) -> None:
    """Fold one dead process's values into the archive's: counts add, live gauges go,
    window buckets keep the newer epoch (or add, for the same epoch)."""
    mine = _window_slots(merged)
    theirs = _window_slots(values)
    replace = {slot for slot, e in theirs.items() if e > mine.get(slot, -math.inf)}
    skip = {slot for slot, e in theirs.items() if e < mine.get(slot, -math.inf)}
    if replace:  # drop the archive's older cells of those buckets
        for key in [k for k in merged if k.endswith("]") and '"w"' in k]:
            parts = json.loads(key)
            wi = _w_index(parts)
            if wi is not None and tuple(parts[:wi + 2]) in replace:
                del merged[key]
    for key, v in values.items():
        if v != v:
            continue
        parts = json.loads(key)
        if parts[0] in ("http", "queue") or (
            parts[0] == "task" and parts[2] in ("running", "pending")
        ):
            continue
        wi = _w_index(parts)
        if wi is not None:
            slot = tuple(parts[:wi + 2])
            if slot in skip:
                continue
            if parts[-1] == "e":
                merged[key] = v
                continue
        merged[key] = merged.get(key, 0.0) + v


def _w_index(parts: List[Any]) -> Optional[int]:
    for i, p in enumerate(parts):
        if p == "w" and i >= 2:
            return i
    return None


def _compact(directory: str, dead: Sequence[str]) -> None:
    """Fold ``dead`` files into the archive and delete them (caller holds the lock)."""
    if not dead:
        return
    archive = os.path.join(directory, _ARCHIVE)
    merged = read_values(archive)
    for path in dead:
        _merge_for_archive(merged, read_values(path))
    tmp = archive + f".{os.getpid()}.tmp"
    out = ValueFile(tmp)
    try:
        for key, v in merged.items():
            out.set(key, v)
    finally:
        out.close()
    os.replace(tmp, archive)
    for path in dead:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _directory(directory: Optional[str]) -> Optional[str]:
    """The directory a helper works in: the one given, else the environment's."""
    return directory or os.environ.get(ENV_VAR)


def mark_process_dead(pid: int, directory: Optional[str] = None) -> None:
    """Fold the values of process ``pid`` into the archive now.

    For gunicorn's ``child_exit`` hook (``def child_exit(server, worker):
    mark_process_dead(worker.pid)``). Without it the next scrape does the same, once it
    sees the process is gone.
    """
    directory = _directory(directory)
    if not directory:
        raise ValueError(f"no directory: pass directory= or set ${ENV_VAR}")
    path = os.path.join(directory, f"{_PREFIX}{pid}.db")
    if os.path.exists(path):
        with _locked(directory, exclusive=True):
            _compact(directory, [path] if os.path.exists(path) else [])


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook, ready to use: in ``gunicorn.conf.py`` write
    ``from jobmetrics.multiprocess import child_exit``."""
    mark_process_dead(worker.pid)


def setup_celery(directory: Optional[str] = None) -> None:
    """Fold each Celery prefork child's values into the archive as it shuts down.

    Call once where the Celery app is defined (a process that only sends tasks imports it
    too: there it does nothing). Children are forked with a file of their own (see
    :class:`ProcessStore`); this only makes their exit cheap for the next scrape. A
    prefork worker started without multi-process mode logs a warning as it starts: its
    children would record into memory that no scrape of the main process reads.
    """
    from celery.signals import worker_init, worker_process_shutdown

    def on_init(sender: Any = None, **_: Any) -> None:
        pool = getattr(sender, "pool_cls", None)
        name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        if "prefork" in str(name) and not _directory(directory):
            logger.warning(
                "jobmetrics: Celery prefork pool without multi-process mode: each child "
                "records into its own memory and the main process's /metrics shows none "
                "of it; export %s (an empty directory) before starting the worker", ENV_VAR)

    def on_shutdown(**_: Any) -> None:
        if not _directory(directory):
            return  # not in multi-process mode: nothing was written
        try:
            mark_process_dead(os.getpid(), directory)
        except Exception as exc:
            _errors.report("celery worker_process_shutdown", exc)

    worker_init.connect(on_init, weak=False)
    worker_process_shutdown.connect(on_shutdown, weak=False)


def read_aggregate(directory: str, settings: Settings) -> _Aggregate:
    """Read and merge every process's file (folding the dead ones into the archive)."""
    paths = glob.glob(os.path.join(directory, f"{_PREFIX}*.db"))
    dead = [p for p in paths if (pid := _pid_of(p)) is not None and not _pid_alive(pid)]
    if dead:
        with _locked(directory, exclusive=True):
            _compact(directory, [p for p in dead if os.path.exists(p)])
    agg = _Aggregate()
    now = time.time()
    with _locked(directory, exclusive=False):
        for path in glob.glob(os.path.join(directory, f"{_PREFIX}*.db")):
            pid = _pid_of(path)
            live = pid is not None and _pid_alive(pid)
            agg.live += live
            _add_file(agg, read_values(path), live, settings, now)
    return agg


def collect(directory: str, settings: Settings, names: Dict[str, str],
            info: Dict[str, str]) -> List[Metric]:
    """Every family, merged over the processes writing to ``directory``."""
    agg = read_aggregate(directory, settings)
    s = settings
    (inflight, requests, rdur, total, ptime, rate, running, pending, size, fam) = (
        new_family(key, names, s) for key in (
            "inflight", "requests", "request_duration", "tasks", "process_time",
            "success_rate", "running", "pending", "queue_size", "info"))
    inflight.add_metric((), agg.inflight)
    for k3, v in sorted(agg.requests.items()):
        requests.add_metric(k3, v)
    for (method, op), d in sorted(agg.http_durations.items()):
        _emit(rdur, {"method": method, "operation": op}, d, s)
    for t in sorted(agg.types):
        for i, status in enumerate(STATUSES):
            d = agg.task_durations.get((t, i)) or _DurAgg()
            total.add_metric((t, status), d.count)
            _emit(ptime, {"type": t, "status": status}, d, s)
        good, bad = agg.ratio.get(t, (0.0, 0.0))
        rate.add_metric((t,), good / (good + bad) if good + bad else math.nan)
        running.add_metric((t,), agg.running.get(t, 0.0))
        pending.add_metric((t,), agg.pending.get(t, 0.0))
    for name, v in sorted(agg.queues.items()):
        size.add_metric((name,), v)
    merged_info = dict(info)
    if merged_info.get("workers") in ("", "0"):
        merged_info["workers"] = str(agg.live)
    fam.add_metric((), merged_info)
    out = [inflight, requests, rdur, total, ptime, rate, running, pending, size, fam]
    if agg.queue_waits:
        wait = wait_metric(s)
        for name, d in sorted(agg.queue_waits.items()):
            _emit(wait, {"queue": name}, d, s)
        out.append(wait)
    return out


def _emit(metric: Metric, labels: Dict[str, str], d: _DurAgg, s: Settings) -> None:
    if metric.type == "histogram":
        counts = [d.hist.get(i, 0.0) for i in range(len(s.buckets) + 1)]
        emit_histogram(metric, labels, s.buckets, counts, d.sum, d.count)
        return
    sketch = QuantileSketch(s.relative_accuracy)
    for (sign, k), n in d.window.items():
        sketch.add_bucket(sign, k, int(n))
    emit_summary(metric, labels, s.quantiles, sketch.quantiles(s.quantiles), d.sum, d.count)
