from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(registry: CollectorRegistry) -> JobMetrics:
    """A JobMetrics on a registry of its own, with the default prefix."""
    return JobMetrics(registry=registry, process_collectors=False)

from exporter_support import redis_server  # noqa: E402, F401  (fixture for the exporter tests)
from pg_support import pg_server  # noqa: E402, F401  (fixture for the PostgreSQL exporter tests)
