"""A Django project with django-q2's ORM broker on PostgreSQL, driven step by step.

Run as ``python django_q_app.py <url> <step>`` (a subprocess, so the test process never
configures Django): ``migrate``; ``enqueue`` (``async_task``: three that return, one that
raises); ``take`` (the ORM broker's ``dequeue``, as a cluster's pusher calls it, without
acknowledging: the task stays locked, in flight); ``work`` (a real ``Cluster`` runs until
every task has a result, then stops).
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

CLUSTER = "jobs"


def setup(url: str) -> None:
    import django
    from django.conf import settings

    parts = urlsplit(url)
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
            "HOST": parts.hostname, "PORT": parts.port, "USER": parts.username,
            "PASSWORD": parts.password,
        }},
        INSTALLED_APPS=["django_q"],
        SECRET_KEY="jobmetrics-tests-only",
        USE_TZ=True,
        Q_CLUSTER={"name": CLUSTER, "orm": "default", "workers": 1, "timeout": 20,
                   "retry": 60, "max_attempts": 1, "poll": 0.1, "catch_up": False},
        LOGGING_CONFIG=None,
    )
    django.setup()


def main(url: str, step: str) -> None:
    setup(url)
    from django.core.management import call_command
    from django_q.brokers import get_broker
    from django_q.models import OrmQ, Task
    from django_q.tasks import async_task

    if step == "migrate":
        call_command("migrate", verbosity=0)
    elif step == "enqueue":
        for value in (1.5, 2.5, 3.5):
            async_task("math.floor", value)
        async_task("math.sqrt", -1)  # ValueError: math domain error
    elif step == "take":
        taken = get_broker().dequeue()
        print(len(taken or []))
    elif step == "work":
        from django_q.cluster import Cluster

        expected = Task.objects.count() + OrmQ.objects.count()
        cluster = Cluster(get_broker())
        cluster.start()
        deadline = time.monotonic() + 60
        while (Task.objects.count() < expected or OrmQ.objects.exists()) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.stop()
        print(Task.objects.count())
    else:
        raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
