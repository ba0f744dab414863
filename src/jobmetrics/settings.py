"""Validated configuration of a :class:`~jobmetrics.JobMetrics`.

Every check names the argument it rejects, so a mistake fails at construction with a
message that says what to change.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_QUANTILES",
    "DurationKind",
    "Settings",
]

DEFAULT_QUANTILES: Tuple[float, ...] = (0.5, 0.9, 0.99)
#: Histogram buckets (seconds) when a duration family is a histogram: HTTP requests
#: take milliseconds, jobs take minutes, so the range is wide.
DEFAULT_BUCKETS: Tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0, 3600.0,
)

DurationKind = str  # "summary", "histogram" or "native"

_NAME_PART = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_name_part(arg: str, value: object, allow_empty: bool = True) -> str:
    """A metric-name component: ``[a-zA-Z_][a-zA-Z0-9_]*`` (or empty when allowed)."""
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a str, got {type(value).__name__}")
    if value == "" and allow_empty:
        return value
    if not _NAME_PART.match(value) or value.startswith("__"):
        raise ValueError(
            f"{arg}={value!r} is not a valid Prometheus metric name part: use letters, "
            "digits and underscores, not starting with a digit or '__'"
        )
    return value


def check_str(arg: str, value: object, allow_empty: bool = True) -> str:
    """A ``str`` (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{arg} must not be empty")
    return value


#: How booleans are spelt in environment variables and command lines.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> Optional[bool]:
    """``True``/``False`` for the words of :data:`TRUE_WORDS`/:data:`FALSE_WORDS` (any
    case, spaces around), ``None`` for anything else."""
    low = text.strip().lower()
    return True if low in TRUE_WORDS else False if low in FALSE_WORDS else None


def parse_port(var: str, raw: str) -> int:
    """A port number (0-65535) from an environment variable's text, or ``ValueError``
    naming the variable."""
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{var}={raw!r} is not a port number (0-65535)")
    return port


def env_port(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """``$JOBMETRICS_PORT`` as a port number, ``None`` when unset or empty (where the
    job-framework integrations serve ``/metrics``)."""
    raw = (os.environ if environ is None else environ).get("JOBMETRICS_PORT")
    return None if not raw else parse_port("JOBMETRICS_PORT", raw)


def serve_port(port: Optional[int]) -> Optional[int]:
    """The port a job-framework integration serves ``/metrics`` on: ``port`` when given
    (``TypeError``/``ValueError`` unless it is one), else :func:`env_port`."""
    if port is None:
        return env_port()
    check_int("port", port, 0, 65535)
    return port


def env_addr(default: str) -> str:
    """``$JOBMETRICS_ADDR`` when set, else ``default``."""
    return os.environ.get("JOBMETRICS_ADDR") or default


def check_positive(arg: str, value: object) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")
    return float(value)


#: Bounds of ``relative_accuracy``.
MIN_RELATIVE_ACCURACY = 1e-4
MAX_RELATIVE_ACCURACY = 0.5
#: The shortest window, in seconds: an age bucket must stay a usable width.
MIN_WINDOW = 1e-3


def check_window(arg: str, value: object) -> float:
    """A window length in seconds: finite, at least :data:`MIN_WINDOW`."""
    seconds = check_positive(arg, value)
    if seconds < MIN_WINDOW:
        raise ValueError(f"{arg} must be at least {MIN_WINDOW} seconds, got {value!r}")
    return seconds


def check_int(arg: str, value: object, minimum: int, maximum: Optional[int] = None) -> int:
    """An int within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{arg} must be >= {minimum}{upper}, got {value!r}")
    return value


def check_quantiles(arg: str, value: object) -> Tuple[float, ...]:
    """Distinct numbers strictly between 0 and 1, returned sorted."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{arg} must be a sequence of numbers, got {type(value).__name__}")
    out = []
    for q in value:
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise TypeError(f"{arg} must hold numbers, got {type(q).__name__} {q!r}")
        if not 0.0 < q < 1.0:
            raise ValueError(f"{arg}: every quantile must be in (0, 1), got {q!r}")
        out.append(float(q))
    if len(set(out)) != len(out):
        raise ValueError(f"{arg} holds a quantile twice: {list(value)!r}")
    return tuple(sorted(out))


def check_buckets(arg: str, value: object) -> Tuple[float, ...]:
    """Strictly increasing finite upper bounds (``+Inf`` is added at exposition)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{arg} must be a sequence of numbers, got {type(value).__name__}")
    out = []
    for b in value:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"{arg} must hold numbers, got {type(b).__name__} {b!r}")
        out.append(float(b))
    if out and out[-1] == math.inf:
        out.pop()
    if not out:
        raise ValueError(f"{arg} must hold at least one finite bound")
    if any(not math.isfinite(b) for b in out):
        raise ValueError(f"{arg} must be finite (apart from a last +Inf), got {list(value)!r}")
    if any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"{arg} must be strictly increasing, got {list(value)!r}")
    return tuple(out)


def check_kind(arg: str, value: object) -> str:
    """``"summary"``, ``"histogram"`` or ``"native"``."""
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be 'summary', 'histogram' or 'native', got "
                        f"{type(value).__name__}")
    if value not in ("summary", "histogram", "native"):
        raise ValueError(f"{arg} must be 'summary', 'histogram' or 'native', got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything that shapes the families a :class:`~jobmetrics.JobMetrics` emits.

    Two instances with equal settings on one registry share their families.
    """

    namespace: str = "harbor"
    subsystem: str = "jobservice"
    quantiles: Tuple[float, ...] = DEFAULT_QUANTILES
    max_age: float = 600.0
    age_buckets: int = 5
    relative_accuracy: float = 0.01
    task_duration: str = "summary"
    http_duration: str = "summary"
    buckets: Tuple[float, ...] = DEFAULT_BUCKETS
    success_rate_window: float = 600.0
    max_series: int = 1000
    multiprocess_dir: str = ""
    native_max_buckets: int = 160

    def __post_init__(self) -> None:
        check_name_part("namespace", self.namespace)
        check_name_part("subsystem", self.subsystem)
        if not self.namespace and not self.subsystem:
            raise ValueError("namespace and subsystem cannot both be empty")
        object.__setattr__(self, "quantiles", check_quantiles("quantiles", self.quantiles))
        object.__setattr__(self, "max_age", check_window("max_age", self.max_age))
        check_int("age_buckets", self.age_buckets, 1, 1000)
        ra = check_positive("relative_accuracy", self.relative_accuracy)
        if not MIN_RELATIVE_ACCURACY <= ra <= MAX_RELATIVE_ACCURACY:
            # Finer than this, the sketch's log base is 1 to the float's precision.
            raise ValueError(
                f"relative_accuracy must be in [{MIN_RELATIVE_ACCURACY}, "
                f"{MAX_RELATIVE_ACCURACY}], got {ra!r}")
        object.__setattr__(self, "relative_accuracy", ra)
        check_kind("task_duration", self.task_duration)
        check_kind("http_duration", self.http_duration)
        object.__setattr__(self, "buckets", check_buckets("buckets", self.buckets))
        object.__setattr__(
            self,
            "success_rate_window",
            check_window("success_rate_window", self.success_rate_window),
        )
        check_int("max_series", self.max_series, 1)
        check_int("native_max_buckets", self.native_max_buckets, 1)
        if not isinstance(self.multiprocess_dir, str):
            raise TypeError(
                f"multiprocess_dir must be a str, got {type(self.multiprocess_dir).__name__}"
            )

    @property
    def prefix(self) -> str:
        """``namespace_subsystem_`` (parts that are empty are left out)."""
        return "".join(p + "_" for p in (self.namespace, self.subsystem) if p)
