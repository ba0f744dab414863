"""Checks every test can make of an exposition: promtool and prometheus_client's parser."""

from __future__ import annotations

import shutil
import subprocess
from typing import Dict, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Labels = Tuple[Tuple[str, str], ...]


def promtool_check(text: str) -> None:
    """Fail unless ``promtool check metrics`` accepts ``text`` without a complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: Debian package 'prometheus' (scripts/test.sh installs it)")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0 and not out.strip(), f"promtool check metrics:\n{out}"


def scrape(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry).decode()


def samples(text: str) -> Dict[Tuple[str, Labels], float]:
    """``{(sample name, sorted labels): value}`` parsed by prometheus_client's parser."""
    out: Dict[Tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> Optional[float]:
    """One sample's value from a fresh scrape of ``registry`` (None when absent)."""
    return samples(scrape(registry)).get((name, tuple(sorted(labels.items()))))
