"""A Starlette job API with metrics: `python examples/starlette_app.py --port 8000`.

Try  curl -X POST localhost:8000/api/jobs/42/retry  and  curl localhost:8000/metrics
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from jobmetrics import ASGIMiddleware, JobMetrics

m = JobMetrics()


async def get_job(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["job_id"], "status": "running"})


async def retry_job(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["job_id"], "retried": True})


api = Mount("/api", routes=[
    Route("/jobs/{job_id:int}", get_job),
    Route("/jobs/{job_id:int}/retry", retry_job, methods=["POST"]),
])
# A Route serves /metrics itself (a Mount would redirect it to /metrics/).
app = Starlette(routes=[api, Route("/metrics", m.make_asgi_app())])
app.add_middleware(ASGIMiddleware, metrics=m)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--addr", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.addr, port=args.port, log_level="warning")
