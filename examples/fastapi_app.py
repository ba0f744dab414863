"""A FastAPI job API with metrics: `python examples/fastapi_app.py --port 8000`.

Try  curl localhost:8000/v1/jobs/7  and  curl localhost:8000/metrics
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException

from jobmetrics import ASGIMiddleware, JobMetrics

m = JobMetrics()
router = APIRouter(prefix="/v1")


@router.get("/jobs/{job_id}")
async def get_job(job_id: int) -> dict[str, object]:
    if job_id == 0:
        raise HTTPException(status_code=404, detail="no such job")
    return {"id": job_id, "status": "running"}


@m.task("replication")
async def replicate(job_id: int) -> None:
    pass


@router.post("/jobs/{job_id}/replicate")
async def start_replication(job_id: int) -> dict[str, object]:
    await replicate(job_id)
    return {"id": job_id, "replicated": True}


app = FastAPI()
app.include_router(router)
app.add_middleware(ASGIMiddleware, metrics=m)
app.add_route("/metrics", m.make_asgi_app())  # /metrics itself: a mount redirects


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--addr", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.addr, port=args.port, log_level="warning")
