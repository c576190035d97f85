"""Generation job routes: submit, list, get, image, cancel."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.errors import parse_body, query_limit
from sidecar.api.keys import BUILDER, DEVICE, RUNNER
from sidecar.api.models import JobRequest
from sidecar.errors import InvalidField, JobNotFinished
from sidecar.statuses import JOB_STATUSES

routes = web.RouteTableDef()


@routes.post("/jobs")
async def submit_job(request: web.Request) -> web.Response:
    req = await parse_body(request, JobRequest)
    request.app[DEVICE].training.refuse_if_training()
    built = await request.app[BUILDER].build(req)
    job = await request.app[RUNNER].submit(built)
    return web.json_response(job.to_api(), status=202, headers={"Location": f"/jobs/{job.id}"})


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise InvalidField(f"status must be one of {', '.join(JOB_STATUSES)}.", {"field": "status", "value": status})
    limit = query_limit(request)
    jobs = await request.app[RUNNER].list(status, limit)
    return web.json_response({"jobs": [j.to_api() for j in jobs]})


@routes.get("/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    job = await request.app[RUNNER].get(request.match_info["id"])
    return web.json_response(job.to_api())


@routes.get("/jobs/{id}/image")
async def get_image(request: web.Request) -> web.StreamResponse:
    job = await request.app[RUNNER].get(request.match_info["id"])
    if job.status != "succeeded" or not job.output_file:
        raise JobNotFinished(f"Job {job.id} is {job.status}; it has no image.", {"jobId": job.id, "status": job.status})
    return web.FileResponse(job.output_file, headers={"Content-Type": "image/png"})


@routes.post("/jobs/{id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[RUNNER].cancel(request.match_info["id"])
    return web.json_response(job.to_api(), status=202 if job.status == "running" else 200)
