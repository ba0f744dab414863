"""A single-file Django job API with metrics: `python examples/django_app.py --port 8000`.

Try  curl localhost:8000/jobs/7/  and  curl localhost:8000/metrics
"""

from __future__ import annotations

import argparse
import sys

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="example-only",
    MIDDLEWARE=["jobmetrics.django.RouteMiddleware"],
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from jobmetrics import JobMetrics, WSGIMiddleware  # noqa: E402

m = JobMetrics()


def get_job(request: HttpRequest, job_id: int) -> JsonResponse:
    return JsonResponse({"id": job_id, "status": "running"})


def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(m.registry), content_type="text/plain; version=0.0.4")


urlpatterns = [
    path("jobs/<int:job_id>/", get_job),
    path("metrics", metrics),
]

application = WSGIMiddleware(get_wsgi_application(), metrics=m)


if __name__ == "__main__":
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--addr", default="127.0.0.1")
    args = parser.parse_args(sys.argv[1:])
    with make_server(args.addr, args.port, application, Server) as server:
        server.serve_forever()
