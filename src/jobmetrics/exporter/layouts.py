"""Where each job system keeps its queues in Redis, and how to read them in bounded work.

A layout turns one pass over Redis into a :class:`Reading`. Every layout reads a fixed
number of round trips per scrape (queue discovery, then one or two pipelines) and a fixed
number of commands per queue (``LLEN``, ``LINDEX``, ``ZCARD``/``ZCOUNT``, ``HGETALL`` of a
small hash), so the cost does not grow with the number of jobs waiting. Queue discovery
walks a set with ``SSCAN`` (or the keyspace with ``SCAN``, never ``KEYS``) and stops at
``max_queues``.

Key layouts, each checked against the job system's own source:

``harbor``
    gocraft/work, as Harbor's jobservice uses it (``redis.go`` in gocraft/work). With the
    key prefix ``ns`` (Harbor: ``{harbor_job_service_namespace}``; a ``:`` is appended
    unless it already ends with one): ``ns:known_jobs`` (set of job names),
    ``ns:jobs:<name>`` (list; ``LPUSH`` to enqueue and ``RPOPLPUSH`` to fetch, so the
    oldest job is at the tail; the job is JSON whose field ``t`` is its enqueue time in
    epoch seconds), ``ns:jobs:<name>:lock_info`` (hash worker-pool id -> jobs of that
    name running in that pool) and ``ns:scheduled`` (sorted set of scheduled jobs).
``rq``
    RQ (``queue.py``, ``registry.py``, ``job.py``). With the prefix ``rq``:
    ``rq:queues`` (set of queue keys), ``rq:queue:<name>`` (list of job ids, ``RPUSH`` to
    enqueue and ``LPOP`` to fetch, so the oldest is at the head), ``rq:job:<id>`` (hash
    whose ``enqueued_at`` is ``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC), ``rq:wip:<name>`` (the
    started-job registry: sorted set scored by the time an entry expires) and
    ``rq:scheduled:<name>`` (the scheduled-job registry).
``celery``
    Celery's Redis broker (kombu's ``transport/redis.py``). A queue ``q`` is the list
    ``q`` plus one list per priority step, ``q\\x06\\x163``, ``q\\x06\\x166``,
    ``q\\x06\\x169`` (``LPUSH`` to publish, ``BRPOP`` to consume: oldest at the tail);
    queues are declared in the sets ``_kombu.binding.<exchange>`` whose members are
    ``routing_key\\x06\\x16pattern\\x06\\x16queue``. A message is JSON with ``headers``;
    Celery puts no enqueue time in it, so the latency is reported only for messages
    stamped by :func:`stamp_enqueue_time` (see docs/exporter.md).
``arq``
    arq (``constants.py``, ``connections.py``, ``worker.py``). A queue is a sorted set
    named by the queue itself (``arq:queue`` by default) of job ids scored by when each
    job is due, in epoch milliseconds (its enqueue time, or the time it was deferred to);
    a worker takes the due ids lowest score first and leaves each in the set while it
    runs, marked by the key ``arq:in-progress:<id>``, until it finishes. arq's key names
    are fixed and it keeps no list of its queues, so the queues are named, not
    discovered; the job payloads (``arq:job:<id>``, pickled by default) are never read.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

__all__ = [
    "ARQ_DEFAULT_QUEUE",
    "CELERY_ENQUEUED_HEADER",
    "LAYOUTS",
    "ArqLayout",
    "CeleryLayout",
    "HarborLayout",
    "Layout",
    "RQLayout",
    "Reading",
    "make_layout",
    "stamp_enqueue_time",
]

Labels = Tuple[str, ...]

logger = logging.getLogger("jobmetrics.exporter")

# LLEN of each list in KEYS and a bounded prefix of the element at index ARGV[1]: no
# Redis command reads part of a list element, so a script cuts it server-side and at
# most ARGV[2] bytes per list cross the network and reach the JSON parser, however large
# the job is. Per list: length, the element's full size (-1 when the list is empty) and
# the prefix (nothing when ARGV[3] is 1 and the element is longer than ARGV[2]). Redis
# itself still copies the element for the script, so a list whose length is ARGV[3 + i]
# (the length when its oversized end was last read) is not read again: size -2.
_ENDS_SCRIPT = """
local out = {}
local limit = tonumber(ARGV[2])
local whole = ARGV[3] == '1'
for i, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  local size, head = -1, ''
  if n > 0 and n == tonumber(ARGV[3 + i]) then
    size = -2
  elseif n > 0 then
    local v = redis.call('LINDEX', key, ARGV[1])
    if v then
      size = string.len(v)
      if size <= limit or not whole then
        head = string.sub(v, 1, limit)
      end
    end
  end
  out[#out + 1] = n
  out[#out + 1] = size
  out[#out + 1] = head
end
return out
"""

#: The Celery message header :func:`stamp_enqueue_time` sets (epoch seconds, a float).
CELERY_ENQUEUED_HEADER = "jobmetrics_enqueued_at"


@dataclass
class Reading:
    """One consistent read of the store: ``label values -> value`` per family.

    A family absent from the layout stays empty; ``errors`` lists the queues whose
    entries could not be decoded (their latency is left out, their size is kept) or whose
    keys could not be read (left out altogether); ``commands`` counts the Redis commands
    the read sent, which does not grow with the number of jobs waiting.
    """

    queue_size: Dict[str, float] = field(default_factory=dict)
    queue_latency: Dict[str, float] = field(default_factory=dict)
    concurrency: Dict[Labels, float] = field(default_factory=dict)
    scheduled: Dict[Labels, float] = field(default_factory=dict)
    #: ``<ns>_task_finished_total``: jobs finished since the exporter started (SQL layouts).
    finished: Dict[Labels, float] = field(default_factory=dict)
    commands: int = 0
    errors: List[str] = field(default_factory=list)


def _check_bound(arg: str, value: object) -> None:
    """A layout's bound on its work per scrape: an int >= 1 (``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be an int >= 1, got {value!r}")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _latency(now: float, enqueued_at: float) -> float:
    # Clocks of the enqueuing hosts and of the exporter disagree: a job "enqueued in the
    # future" has waited 0 s, never a negative time (Harbor's exporter reports < 0).
    return max(0.0, now - enqueued_at)


def _failed(layout: Layout, queue: str, replies: Sequence[Any], out: Reading) -> bool:
    """True (and the failure logged once) when a command about ``queue`` failed.

    Pipelines run with ``raise_on_error=False``: one key of an unexpected type (WRONGTYPE)
    leaves that queue out of the scrape instead of failing the whole read.
    """
    for reply in replies:
        if isinstance(reply, Exception):
            out.errors.append(queue)
            layout.log_once(
                "reading a queue's keys",
                "reading queue %r failed (%s: %s); such queues are left out of the scrape",
                queue, type(reply).__name__, reply,
            )
            return True
    return False




_WS = " \t\n\r"


def _json_field(prefix: bytes, name: str, complete: bool) -> Any:
    """The value of the top-level field ``name`` of the JSON object starting ``prefix``.

    Only the fields before ``name`` are decoded, and only within ``prefix`` (the job may
    go on beyond it when ``complete`` is false): the bounded read of a tail job whose
    enqueue time comes first (gocraft/work writes ``name``, ``id``, then ``t``). Raises
    ``KeyError`` when the field is not in the prefix, ``ValueError`` on what is not JSON;
    a value nested deeper than the interpreter's recursion limit raises
    ``RecursionError``, which callers treat as undecodable.
    """
    text = prefix.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    end = len(text)

    def skip(i: int) -> int:
        while i < end and text[i] in _WS:
            i += 1
        return i

    i = skip(0)
    if i >= end or text[i] != "{":
        raise ValueError("not a JSON object")
    i = skip(i + 1)
    while i < end and text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = skip(i)
        if not isinstance(key, str) or i >= end or text[i] != ":":
            raise ValueError("not a JSON object")
        value, i = decoder.raw_decode(text, skip(i + 1))
        i = skip(i)
        if i >= end and not complete:
            break  # the value may go on beyond the prefix (a number cut short)
        if key == name:
            return value
        if i < end and text[i] == ",":
            i = skip(i + 1)
        elif i < end and text[i] != "}":
            raise ValueError("not a JSON object")
    raise KeyError(name)


def _bounded_members(client: Any, key: str, limit: int) -> Tuple[List[str], int]:
    """Up to ``limit`` members of a set, sorted, walked with SSCAN; and the SSCAN calls."""
    out: List[str] = []
    cursor: Any = 0
    calls = 0
    while True:
        cursor, members = client.sscan(key, cursor, count=max(100, limit))
        calls += 1
        out.extend(_text(m) for m in members)
        if int(cursor) == 0 or len(out) >= limit:
            break
    return sorted(set(out))[:limit], calls


class Layout:
    """How one job system keeps its queues in Redis; subclasses read one of them.

    ``queues`` fixes the queues (job types for ``harbor``) to read; when empty they are
    discovered at each read, at most ``max_queues`` of them.
    """

    #: Name used by ``--layout``.
    name = ""
    #: Label naming a queue: ``type`` where there is one queue per job type (Harbor's),
    #: ``queue`` for named queues (RQ, Celery).
    queue_label = "queue"
    #: Labels of ``<ns>_task_concurrency``, or None when the layout has no such family.
    concurrency_labels: Optional[Labels] = None
    #: Labels of ``<ns>_task_scheduled``, or None when the layout has no such family.
    scheduled_labels: Optional[Labels] = None
    #: Labels of ``<ns>_task_finished_total``, or None when the layout has no such family.
    finished_labels: Optional[Labels] = None
    #: Key prefix used when none is given.
    default_key_prefix = ""

    def __init__(
        self,
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        max_queues: int = 500,
    ) -> None:
        if isinstance(queues, str):
            raise TypeError("queues must be a sequence of names, not a str")
        if key_prefix is not None and not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        _check_bound("max_queues", max_queues)
        for q in queues:
            if not isinstance(q, str) or not q:
                raise ValueError(f"queues must hold non-empty names, got {q!r}")
        self.key_prefix = self.default_key_prefix if key_prefix is None else key_prefix
        self.queues: Tuple[str, ...] = tuple(dict.fromkeys(queues))
        self.max_queues = max_queues
        self._logged: Set[str] = set()
        # list key -> (length, element size, prefix) of an end longer than its limit
        self._oversized: Dict[str, Tuple[int, int, bytes]] = {}

    def _ends(self, pipe: Any, keys: Sequence[str], index: int, limit: int,
              whole: bool = False) -> None:
        """Queue, on ``pipe``, the length and a ``limit``-byte prefix of ``keys``' ends.

        With ``whole``, an element longer than ``limit`` is not sent at all (its size is).
        An end longer than ``limit`` is read again only once its list's length changes:
        Redis copies the whole element to cut it, which a 200 MiB job makes slow.
        """
        known = self.__dict__.setdefault("_oversized", {})
        skip = [known[k][0] if k in known else -1 for k in keys]
        pipe.eval(_ENDS_SCRIPT, len(keys), *keys, index, limit, 1 if whole else 0, *skip)

    def _end_triples(self, reply: Any, keys: Sequence[str],
                     limit: int) -> List[Tuple[int, int, bytes]]:
        """``[(length, element size, element prefix)]`` from one :meth:`_ends` reply."""
        if isinstance(reply, Exception):
            raise reply
        known: Dict[str, Tuple[int, int, bytes]] = self.__dict__.setdefault("_oversized", {})
        out = []
        for key, i in zip(keys, range(0, len(reply), 3)):
            head = reply[i + 2]
            triple = (int(reply[i]), int(reply[i + 1]),
                      head if isinstance(head, bytes) else str(head).encode())
            if triple[1] == -2:
                triple = known[key]  # same length as when read: the same end, kept
            elif triple[1] > limit:
                if len(known) >= 4 * self.max_queues:
                    known.clear()  # bounded however many queue names come and go
                known[key] = triple
            else:
                known.pop(key, None)
            out.append(triple)
        return out

    def log_once(self, place: str, message: str, *args: object) -> None:
        """Log a warning the first time something goes wrong at ``place``, never again.

        Keyed by the place in the code (a fixed string), not by the queue it happened
        to: thousands of bad queues log one line, and the set of places stays small.
        """
        logged: Set[str] = self.__dict__.setdefault("_logged", set())
        if place in logged:
            return
        logged.add(place)
        logger.warning(
            "jobmetrics exporter: layout %s: " + message + " (logged once)", self.name, *args
        )

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Read every family of this layout from ``client`` (a ``redis.Redis``)."""
        raise NotImplementedError


class HarborLayout(Layout):
    """gocraft/work's keys, as Harbor's jobservice keeps them (one queue per job type)."""

    name = "harbor"
    queue_label = "type"
    concurrency_labels = ("type", "pool")
    scheduled_labels = ()
    default_key_prefix = "{harbor_job_service_namespace}"
    #: Bytes of a tail job read to find its enqueue time: gocraft/work writes ``name``,
    #: ``id`` and then ``t``, so a job of any size costs at most this much.
    job_prefix_bytes = 4096

    def __init__(
        self,
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        max_queues: int = 500,
        max_pools: int = 100,
    ) -> None:
        super().__init__(key_prefix, queues, max_queues)
        _check_bound("max_pools", max_pools)
        #: The most worker pools reported per job type (fields of its ``lock_info``).
        self.max_pools = max_pools
        self._prefix_given = key_prefix is not None

    def _key(self, suffix: str) -> str:
        ns = self.key_prefix
        # gocraft/work's redisNamespacePrefix: append ':' unless it is there already.
        if ns and not ns.endswith(":"):
            ns += ":"
        return ns + suffix

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Sizes, latency from the tail job's ``t``, concurrency per pool, scheduled."""
        out = Reading()
        types = list(self.queues)
        if not types:
            types, out.commands = _bounded_members(
                client, self._key("known_jobs"), self.max_queues
            )
        pipe = client.pipeline(transaction=False)
        for t in types:
            jobs = self._key("jobs:" + t)
            self._ends(pipe, [jobs], -1, self.job_prefix_bytes)
            # HSCAN, not HGETALL: a hash with 200k fields costs max_pools, not 200k.
            pipe.hscan(jobs + ":lock_info", 0, count=self.max_pools)
        pipe.zcard(self._key("scheduled"))
        replies = pipe.execute(raise_on_error=False)
        out.commands += len(replies)
        now = time.time() if now is None else now
        for i, t in enumerate(types):
            ends, lock_info = replies[2 * i : 2 * i + 2]
            if _failed(self, t, (ends, lock_info), out):
                continue
            ((size, job_bytes, tail),) = self._end_triples(
                ends, [self._key("jobs:" + t)], self.job_prefix_bytes)
            out.queue_size[t] = float(size)
            if size == 0 or job_bytes < 0:
                out.queue_latency[t] = 0.0  # as gocraft/work's Queues(): empty means 0
            else:
                self._tail_latency(t, tail, job_bytes, now, out)
            self._pools(t, lock_info, out)
        if not _failed(self, "scheduled", replies[-1:], out):
            out.scheduled[()] = float(replies[-1])
        self._check_prefix(types, out)
        return out

    def _tail_latency(self, t: str, tail: bytes, job_bytes: int, now: float,
                      out: Reading) -> None:
        try:
            stamp = _json_field(tail, "t", complete=job_bytes <= len(tail))
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
                raise TypeError(f"'t' is {type(stamp).__name__}, not a number")
            out.queue_latency[t] = _latency(now, float(stamp))
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            out.errors.append(t)
            self.log_once(
                "decoding a tail job", "the oldest job of type %r (%d bytes) has no enqueue "
                "time 't' in its first %d bytes (%s: %s); the latency of such types is left "
                "out", t, job_bytes, self.job_prefix_bytes, type(exc).__name__, exc,
            )

    def _pools(self, t: str, lock_info: Any, out: Reading) -> None:
        cursor, fields = lock_info
        pools = sorted((_text(k), v) for k, v in fields.items())
        if int(cursor) != 0 or len(pools) > self.max_pools:
            self.log_once(
                "bounding lock_info", "the lock_info of type %r holds more than %d worker "
                "pools; %d are reported (max_pools)", t, self.max_pools, self.max_pools,
            )
        for pool, count in pools[: self.max_pools]:
            try:
                out.concurrency[(t, pool)] = float(count)
            except ValueError:
                out.errors.append(t)

    def _check_prefix(self, types: Sequence[str], out: Reading) -> None:
        # A prefix given without Harbor's braces is the usual mistake (Harbor's jobservice
        # wraps its configured namespace in {...}): say so when it finds nothing.
        p = self.key_prefix.rstrip(":")
        if not self._prefix_given or (p.startswith("{") and p.endswith("}")):
            return
        if self.queues:  # given, not discovered: found when anything is there
            found = any(out.queue_size.values()) or bool(out.concurrency)
            found = found or bool(out.scheduled.get(()))
        else:
            found = bool(types)
        if not found:
            self.log_once(
                "empty key prefix", "nothing found under the key prefix %r; Harbor's "
                "jobservice wraps its namespace in braces: --key-prefix %r", self.key_prefix,
                "{" + p + "}",
            )


def _rq_time(value: Any) -> float:
    text = _text(value)
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):  # RQ's utcparse formats
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    raise ValueError(f"not an RQ timestamp: {text!r}")


class RQLayout(Layout):
    """RQ's queues, started and scheduled registries and job hashes."""

    name = "rq"
    queue_label = "queue"
    concurrency_labels = ("queue",)
    scheduled_labels = ("queue",)
    default_key_prefix = "rq"
    #: The longest head entry read as a job id (RQ's are UUIDs or names of the caller's).
    job_id_bytes = 1024

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Sizes, latency of the head job, started (unexpired) and scheduled counts."""
        out = Reading()
        p = self.key_prefix
        queues = list(self.queues)
        if not queues:
            keys, out.commands = _bounded_members(client, f"{p}:queues", self.max_queues)
            head = f"{p}:queue:"
            queues = sorted({k[len(head) :] for k in keys if k.startswith(head)})
        now = time.time() if now is None else now
        pipe = client.pipeline(transaction=False)
        for q in queues:
            self._ends(pipe, [f"{p}:queue:{q}"], 0, self.job_id_bytes, whole=True)
            # Started entries are scored by when they expire: an entry already expired
            # belongs to a dead worker (RQ's cleanup moves it on), so it is not running.
            pipe.zcount(f"{p}:wip:{q}", now, "+inf")
            pipe.zcard(f"{p}:scheduled:{q}")
        replies = pipe.execute(raise_on_error=False)
        out.commands += len(replies)
        heads: List[Tuple[str, str]] = []
        for i, q in enumerate(queues):
            ends, started, scheduled = replies[3 * i : 3 * i + 3]
            if _failed(self, q, (ends, started, scheduled), out):
                continue
            ((size, id_bytes, head_id),) = self._end_triples(
                ends, [f"{p}:queue:{q}"], self.job_id_bytes)
            out.queue_size[q] = float(size)
            out.concurrency[(q,)] = float(started)
            out.scheduled[(q,)] = float(scheduled)
            if size == 0 or id_bytes < 0:
                out.queue_latency[q] = 0.0
            elif id_bytes > self.job_id_bytes:
                out.errors.append(q)  # no job of RQ's has such an id: age unknown
                self.log_once(
                    "reading a head job id", "the head of queue %r is %d bytes, not a job "
                    "id; the latency of such queues is left out", q, id_bytes,
                )
            else:
                heads.append((q, _text(head_id)))
        if heads:
            pipe = client.pipeline(transaction=False)
            for _, job_id in heads:
                pipe.hget(f"{p}:job:{job_id}", "enqueued_at")
            stamps = pipe.execute(raise_on_error=False)
            out.commands += len(stamps)
            for (q, _), stamp in zip(heads, stamps):
                if _failed(self, q, (stamp,), out):
                    continue
                try:
                    out.queue_latency[q] = _latency(now, _rq_time(stamp))
                except ValueError:
                    # The job hash expired or was deleted under its id: age unknown.
                    out.errors.append(q)
        return out


SEP = "\x06\x16"  # kombu's Redis transport separator
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default priority_steps


def _celery_enqueued_at(message: Any) -> Optional[float]:
    payload = json.loads(message)  # bounded: at most CeleryLayout.message_bytes
    headers = payload.get("headers") or {}
    stamp = headers.get(CELERY_ENQUEUED_HEADER)
    if stamp is None:
        return None
    return float(stamp)


class CeleryLayout(Layout):
    """Celery's Redis broker: a list per queue and per priority step."""

    name = "celery"
    queue_label = "queue"
    default_key_prefix = ""  # kombu's global_keyprefix transport option

    #: SCAN calls per read, ``scan_count`` keys each. On a large keyspace one walk spans
    #: several scrapes: each read resumes where the last stopped, and the binding keys of
    #: the last complete walk (plus those found since) are used meanwhile. Give ``queues``
    #: to skip discovery altogether.
    max_scan_calls = 20
    scan_count = 1000
    #: The largest tail message decoded for its enqueue time. kombu writes the body
    #: before the headers, so a message is read whole or not at all; a larger one gives
    #: its queue no latency sample.
    message_bytes = 1 << 20

    def __init__(
        self,
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        max_queues: int = 500,
    ) -> None:
        super().__init__(key_prefix, queues, max_queues)
        # Reads run one at a time (RedisExporter keeps one in flight), so no lock.
        self._cursor: Any = 0
        self._walk: Set[str] = set()  # binding keys found by the walk in progress
        self._known: Set[str] = set()  # binding keys found by the last complete walk

    def _binding_keys(self, client: Any) -> Tuple[List[str], int]:
        match = f"{self.key_prefix}_kombu.binding.*"
        calls = 0
        while calls < self.max_scan_calls:
            self._cursor, batch = client.scan(self._cursor, match=match, count=self.scan_count)
            calls += 1
            self._walk.update(_text(k) for k in batch)
            if int(self._cursor) == 0:
                self._known, self._walk = self._walk, set()
                break
        keys = self._known | self._walk
        # Worker control and event exchanges are not task queues.
        return sorted(k for k in keys if not k.endswith((".pidbox", "celeryev"))), calls

    def _discover(self, client: Any) -> Tuple[List[str], int]:
        keys, calls = self._binding_keys(client)
        names = set()
        for key in keys[: self.max_queues]:
            members, n = _bounded_members(client, key, self.max_queues)
            calls += n
            for member in members:
                parts = member.split(SEP)
                if len(parts) == 3 and parts[2]:
                    names.add(parts[2])
        return sorted(names)[: self.max_queues], calls

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Sizes summed over priority lists; latency of stamped messages at the tails."""
        out = Reading()
        queues = list(self.queues)
        if not queues:
            queues, out.commands = self._discover(client)
        p = self.key_prefix
        pipe = client.pipeline(transaction=False)
        for q in queues:
            self._ends(pipe, list(_priority_keys(p + q)), -1, self.message_bytes, whole=True)
        replies = pipe.execute(raise_on_error=False)
        out.commands += len(replies)
        now = time.time() if now is None else now
        for q, reply in zip(queues, replies):
            if _failed(self, q, (reply,), out):
                continue
            ends = self._end_triples(reply, list(_priority_keys(p + q)), self.message_bytes)
            sizes = [size for size, _, _ in ends]
            out.queue_size[q] = float(sum(sizes))
            oldest: Optional[float] = None
            unknown = False
            for size, message_bytes, tail in ends:
                if size == 0 or message_bytes < 0:
                    continue
                try:
                    if message_bytes > self.message_bytes:
                        raise ValueError(f"larger than {self.message_bytes} bytes")
                    stamp = _celery_enqueued_at(tail)
                except (ValueError, TypeError, AttributeError, OverflowError,
                        RecursionError) as exc:
                    out.errors.append(q)
                    unknown = True
                    self.log_once(
                        "decoding a tail message", "the oldest message of queue %r "
                        "(%d bytes) could not be decoded (%s: %s); the latency of such "
                        "queues is left out", q, message_bytes, type(exc).__name__, exc,
                    )
                    continue
                if stamp is None:
                    unknown = True
                elif oldest is None or stamp < oldest:
                    oldest = stamp
            if sum(sizes) == 0:
                out.queue_latency[q] = 0.0
            elif oldest is not None and not unknown:
                out.queue_latency[q] = _latency(now, oldest)
        return out


def _priority_keys(queue: str) -> Iterable[str]:
    for step in PRIORITY_STEPS:
        yield f"{queue}{SEP}{step}" if step else queue


def stamp_enqueue_time(headers: Optional[Dict[str, Any]] = None, **_: Any) -> None:
    """Celery ``before_task_publish`` handler: stamp each message with its enqueue time.

    Celery's messages carry no enqueue time, so the ``celery`` layout can report a queue's
    latency only for stamped messages. Connect it in the producers::

        from celery.signals import before_task_publish
        before_task_publish.connect(stamp_enqueue_time, weak=False)
    """
    if headers is not None:
        headers.setdefault(CELERY_ENQUEUED_HEADER, time.time())

#: arq's default queue (``arq.constants.default_queue_name``), read when none is named.
ARQ_DEFAULT_QUEUE = "arq:queue"
#: arq's ``in_progress_key_prefix``: ``arq:in-progress:<job id>`` marks a job running.
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"

# One arq queue (KEYS[1], a sorted set of job ids scored by due time in ms) at the time
# ARGV[1] (ms): its type, the due and the deferred counts (ZCOUNT, O(log n)), and among
# the ARGV[3] due jobs of lowest score, those running (ARGV[2] .. id exists) and the
# score of the first that is not. Atomic, so the counts agree with each other.
_ARQ_SCRIPT = """
local key, now = KEYS[1], ARGV[1]
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'zset' then
  return {kind, 0, 0, 0, 0, ''}
end
local due = redis.call('ZCOUNT', key, '-inf', now)
local later = redis.call('ZCOUNT', key, '(' .. now, '+inf')
local running, seen, oldest = 0, 0, ''
if due > 0 then
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                         tonumber(ARGV[3]))
  seen = #ids / 2
  for j = 1, #ids, 2 do
    if redis.call('EXISTS', ARGV[2] .. ids[j]) == 1 then
      running = running + 1
    elseif oldest == '' then
      oldest = ids[j + 1]
    end
  end
end
return {kind, due, later, running, seen, oldest}
"""


class ArqLayout(Layout):
    """arq's queues: a sorted set of job ids per queue, scored by when each job is due.

    - ``queue_size{queue}``: due jobs (score <= now) that are not running;
    - ``queue_latency{queue}``: now minus the due time of the oldest of them (a deferred
      job waits from the time it was deferred to, not from its enqueue); 0 when none;
    - ``concurrency{queue}``: due jobs with an ``arq:in-progress:<id>`` key, found among
      the ``max_running`` due jobs of lowest score (arq's workers start those first);
    - ``scheduled{queue}``: deferred jobs (score > now), retries deferred by ``Retry``
      included.

    arq keeps no list of its queues, so ``queues`` names them (the sorted sets' keys,
    ``_queue_name`` / ``queue_name`` in arq); ``arq:queue`` when none is given. The job
    payloads are never read (pickled by default: unpickling runs code), so whatever
    ``job_serializer`` the application uses, the read is the same, and there is no
    breakdown by function.
    """

    name = "arq"
    queue_label = "queue"
    concurrency_labels = ("queue",)
    scheduled_labels = ("queue",)
    default_key_prefix = ""

    def __init__(
        self,
        key_prefix: Optional[str] = None,
        queues: Sequence[str] = (),
        max_queues: int = 500,
        max_running: int = 1000,
    ) -> None:
        if key_prefix:
            raise ValueError(
                "key_prefix: arq's key names are fixed (arq.constants); name the queues, "
                "the keys of their sorted sets, with queues= (--queue)"
            )
        super().__init__(None, queues, max_queues)
        _check_bound("max_running", max_running)
        if not self.queues:
            self.queues = (ARQ_DEFAULT_QUEUE,)
        #: The most due jobs per queue checked for an ``arq:in-progress:<id>`` key.
        self.max_running = max_running

    def read(self, client: Any, now: Optional[float] = None) -> Reading:
        """Due (waiting and running) and deferred counts, latency of the oldest waiting."""
        out = Reading()
        now = time.time() if now is None else now
        now_ms = f"{now * 1000:.3f}"
        pipe = client.pipeline(transaction=False)
        for q in self.queues:
            pipe.eval(_ARQ_SCRIPT, 1, q, now_ms, ARQ_IN_PROGRESS_PREFIX, self.max_running)
        replies = pipe.execute(raise_on_error=False)
        out.commands += len(replies)
        for q, reply in zip(self.queues, replies):
            if _failed(self, q, (reply,), out):
                continue
            kind, due, later, running, seen, oldest = reply
            kind = _text(kind)
            if kind not in ("zset", "none"):
                out.errors.append(q)
                self.log_once(
                    "reading a queue's keys", "queue %r is a Redis %s, not arq's sorted "
                    "set; such queues are left out of the scrape", q, kind,
                )
                continue
            due, running, seen = int(due), int(running), int(seen)
            out.queue_size[q] = float(due - running)
            out.concurrency[(q,)] = float(running)
            out.scheduled[(q,)] = float(later)
            if oldest:
                self._due_latency(q, oldest, now, out)
            elif due == running:
                out.queue_latency[q] = 0.0  # nothing waits
            else:
                # The max_running oldest due jobs all run: more may, beyond them.
                out.errors.append(q)
                self.log_once(
                    "bounding running jobs", "the %d oldest due jobs of queue %r are all "
                    "running; jobs running beyond them are counted as waiting and the "
                    "queue's latency is left out (max_running)", seen, q,
                )
        return out

    def _due_latency(self, q: str, score: Any, now: float, out: Reading) -> None:
        try:
            due = float(_text(score)) / 1000.0
            if not math.isfinite(due):
                raise ValueError(f"score {_text(score)!r} is not a time")
            out.queue_latency[q] = _latency(now, due)
        except ValueError as exc:
            out.errors.append(q)  # arq scores in epoch ms; +-inf is someone else's ZADD
            self.log_once(
                "reading a due time", "the oldest waiting job of queue %r has no due time "
                "(%s); the latency of such queues is left out", q, exc,
            )


#: Layouts by ``--layout`` name.
LAYOUTS = {cls.name: cls for cls in (HarborLayout, RQLayout, CeleryLayout, ArqLayout)}


def make_layout(
    name: str,
    key_prefix: Optional[str] = None,
    queues: Sequence[str] = (),
    max_queues: int = 500,
    max_pools: int = 100,
    max_running: int = 1000,
) -> Layout:
    """The layout called ``name`` (``harbor``, ``rq``, ``celery`` or ``arq``).

    ``max_pools`` bounds the worker pools reported per job type (``harbor`` only);
    ``max_running`` the due jobs per queue checked for running (``arq`` only).
    """
    try:
        cls = LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"layout={name!r} is not a known layout: choose one of {', '.join(LAYOUTS)}"
        ) from None
    if cls is HarborLayout:
        return HarborLayout(key_prefix, queues, max_queues, max_pools)
    if cls is ArqLayout:
        return ArqLayout(key_prefix, queues, max_queues, max_running)
    return cls(key_prefix=key_prefix, queues=queues, max_queues=max_queues)
