from jobmetrics import JobMetrics
from promcheck import value


def test_decorated_call_is_counted(m: JobMetrics, registry) -> None:
    @m.task("gc")
    def gc() -> int:
        return 7

    assert gc() == 7
    assert value(registry, "harbor_jobservice_task_total", type="gc", status="success") == 1.0
