"""PromQL building blocks shared by alerts, recording rules and dashboards.

A duration family is a summary, a classic histogram or a native histogram, as each
service chooses (``task_duration=`` / ``http_duration=``). The queries here work for all
three at once: each kind is queried in its own way and the results joined with ``or``,
native first (its series carry no ``quantile`` label, which tells them from a summary's
quantile series), then the classic ``_bucket`` series, then the summary's quantiles.
"""

from __future__ import annotations

from typing import Iterable, Sequence

#: Selects a native histogram's series: a summary's quantile series carry ``quantile``.
NATIVE = 'quantile=""'

__all__ = ["NATIVE", "by", "duration_mean", "duration_quantile", "duration_rate", "quantile_is",
           "vec"]


def vec(name: str, *matchers: str) -> str:
    """``name{m1, m2}``, leaving out empty matchers (and the braces when none is left)."""
    parts = [m for m in matchers if m]
    return f"{name}{{{', '.join(parts)}}}" if parts else name


def quantile_is(q: float) -> str:
    """The matcher of a summary's ``q`` quantile series, as prometheus_client formats it."""
    return f'quantile="{q:g}"'


def by(labels: Iterable[str]) -> str:
    """``job, type``: a label list for ``by (...)``."""
    return ", ".join(labels)


def duration_quantile(q: float, name: str, matchers: Sequence[str], labels: Sequence[str],
                      window: str) -> str:
    """The ``q`` quantile of duration family ``name`` per ``labels``, whatever its kind.

    Histograms are aggregated before the quantile is taken, which is exact across
    instances; a summary cannot be aggregated, so its largest per-instance quantile
    (an upper bound of the aggregate) stands in.
    """
    grp = by(labels)
    native = (f"histogram_quantile({q:g}, sum by ({grp}) "
              f"(rate({vec(name, NATIVE, *matchers)}[{window}])))")
    classic = (f"histogram_quantile({q:g}, sum by ({grp}, le) "
               f"(rate({vec(name + '_bucket', *matchers)}[{window}])))")
    summary = f"max by ({grp}) ({vec(name, quantile_is(q), *matchers)})"
    return f"{native}\nor\n{classic}\nor\n{summary}"


def duration_mean(name: str, matchers: Sequence[str], labels: Sequence[str],
                  window: str) -> str:
    """Mean duration per ``labels`` over ``window``, whatever the family's kind."""
    grp = by(labels)
    native_rate = f"sum by ({grp}) (rate({vec(name, NATIVE, *matchers)}[{window}]))"
    native = f"histogram_sum({native_rate})\n/\nhistogram_count({native_rate})"
    classic = (f"sum by ({grp}) (rate({vec(name + '_sum', *matchers)}[{window}]))\n/\n"
               f"sum by ({grp}) (rate({vec(name + '_count', *matchers)}[{window}]))")
    return f"(\n{native}\n)\nor\n(\n{classic}\n)"


def duration_rate(name: str, matchers: Sequence[str], labels: Sequence[str],
                  window: str) -> str:
    """Observations per second per ``labels``, whatever the family's kind."""
    grp = by(labels)
    native = (f"histogram_count(sum by ({grp}) "
              f"(rate({vec(name, NATIVE, *matchers)}[{window}])))")
    classic = f"sum by ({grp}) (rate({vec(name + '_count', *matchers)}[{window}]))"
    return f"{native}\nor\n{classic}"
