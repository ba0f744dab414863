"""A Flask job API with metrics: `python examples/flask_app.py --port 8000`.

Try  curl localhost:8000/jobs/7  and  curl localhost:8000/metrics
"""

from __future__ import annotations

import argparse

from flask import Flask, abort
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import run_simple

from jobmetrics import JobMetrics, WSGIMiddleware

m = JobMetrics()
app = Flask(__name__)


@m.task("scan")
def scan(job_id: int) -> str:
    return f"scanned {job_id}"


@app.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> dict[str, object]:
    if job_id == 0:
        abort(404)
    return {"id": job_id, "status": "running"}


@app.post("/jobs/<int:job_id>/scan")
def start_scan(job_id: int) -> dict[str, object]:
    return {"result": scan(job_id)}


app.wsgi_app = WSGIMiddleware(app.wsgi_app, metrics=m)  # type: ignore[method-assign]
# /metrics next to the app, outside the measured one.
application = DispatcherMiddleware(app, {"/metrics": m.make_wsgi_app()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--addr", default="127.0.0.1")
    args = parser.parse_args()
    run_simple(args.addr, args.port, application, threaded=True)
