"""Generation job routes: submit, list, get, image, cancel. Parse, call the runner, answer through
the response models (a summary in lists and submit/cancel answers, the full job with its workflow
on GET /jobs/{id} or GET /jobs?full=1)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from aiohttp import web

from sidecar.api.errors import parse_body, query_limit
from sidecar.api.keys import BUILDER, DEVICE, FULL_LISTING_LOCK, IDEMPOTENCY, RUNNER, SETTINGS, STORE
from sidecar.api.likeness import with_likeness
from sidecar.api.models import SOURCE_PATTERN, JobRequest
from sidecar.api.operations import Header, Query, operation
from sidecar.api.page_request import resolve_page
from sidecar.api.thumbs import IMAGE_TYPES, SIZE_QUERY, THUMB_HEADERS, image_response
from sidecar.api.responses import Job, JobGroup, JobList, JobListFull, JobListing, JobSummary, Submitted, json_response
from sidecar.errors import (
    BatchSizeNotSupported, CheckpointNotFound, ComfyUnavailable, ControlnetNotFound, DiskFull, EngineUnavailable,
    IdempotencyKeyReused, InitImageInvalid, InvalidField, InvalidState, JobNotFinished, JobNotFound, LoraNotFound,
    NodeNotSupported, NotFound, PageProjectMissing, PoseImageInvalid, PreviewNotFound, PromptFileInvalid, QueueFull,
    ResolutionExceedsProfile, SamplerNotSupported, TrainingInProgress, UpscaleModelNotFound, WorkflowInvalid,
    NoBackendAdmits, FamilyNotSupported, LoraFamilyMismatch,
)
from sidecar.jobs.idempotency import MAX_KEY_LENGTH
from sidecar.jobs.store import IdempotencyClaim, JobRecord
from sidecar.jobs.variations import build_variations, new_group_id
from sidecar.statuses import JOB_STATUSES

routes = web.RouteTableDef()
IDEMPOTENCY_HEADER = "Idempotency-Key"
TRUE, FALSE = ("1", "true"), ("0", "false")
# GET /jobs pages: summaries are small; a full job carries its workflow, which may be megabytes.
LIST_LIMIT, LIST_MAX = 50, 500
FULL_LIMIT, FULL_MAX = 10, 50


@routes.post("/jobs")
@operation(
    "Submit a generation job", {202: Submitted, 200: Submitted}, request=JobRequest,
    description="202: queued. 200: an `Idempotency-Key` this daemon already saw with the same body in the "
                "last 24 hours; the answer is the job (or group) that first submit made (header "
                "Idempotent-Replayed). With `variations` the answer is the group (JobGroup) of that many jobs. "
                "With `page` the daemon writes each succeeded job as that page's next version (`pageVersion` on "
                "the job once written; a failed write fails the job and leaves nothing half-written).",
    errors=(ResolutionExceedsProfile, BatchSizeNotSupported, LoraNotFound, CheckpointNotFound, ControlnetNotFound,
            PoseImageInvalid, InitImageInvalid, NodeNotSupported, SamplerNotSupported, WorkflowInvalid,
            NoBackendAdmits, FamilyNotSupported, LoraFamilyMismatch, TrainingInProgress, IdempotencyKeyReused,
            QueueFull, ComfyUnavailable, EngineUnavailable, DiskFull, PageProjectMissing, PromptFileInvalid,
            UpscaleModelNotFound),
    # Printable ASCII, no space at either end (HTTP drops those): what every HTTP client sends as it is.
    headers=(Header(IDEMPOTENCY_HEADER, {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
                                         "pattern": "^[!-~]([ -~]*[!-~])?$"},
                    "a client-chosen key (a UUID): a retried submit with the same key and body returns the "
                    "first job instead of making another"),),
    response_headers={202: {"Location": "the job's (or group's) URL"},
                      200: {"Location": "the job's (or group's) URL", "Idempotent-Replayed": "true"}},
)
async def submit_job(request: web.Request) -> web.Response:
    key = idempotency_key(request)
    req = await parse_body(request, JobRequest)
    if key is None:
        return await _submit(request, req, None)
    keys = request.app[IDEMPOTENCY]
    claim = keys.claim(key, req.model_dump(mode="json", by_alias=True, exclude_unset=True))
    async with keys.holding(key):
        job_id = await keys.previous(claim)
        if job_id is not None:
            with contextlib.suppress(JobNotFound):  # removed since (gc): the key makes a new job
                job = await request.app[RUNNER].get(job_id)
                return await _answer(request, [job], 200, {"Idempotent-Replayed": "true"})
        return await _submit(request, req, claim)


async def _submit(request: web.Request, req: JobRequest, claim: IdempotencyClaim | None) -> web.Response:
    if request.app[RUNNER].pool is None:  # with several backends a training stops only this machine's
        request.app[DEVICE].training.refuse_if_training()
    page = None
    if req.page is not None:
        req, page = await asyncio.to_thread(resolve_page, req, request.app[SETTINGS].project_root)
    runner, builder, wanted = request.app[RUNNER], request.app[BUILDER], req.generation()
    if req.variations is None:
        job = await runner.submit(await builder.build(wanted), claim, front=bool(req.front), source=req.source,
                                  page=page)
        return await _answer(request, [job], 202)
    specs = await build_variations(builder, wanted, req.variations)
    jobs = await runner.submit_many(specs, claim, front=bool(req.front), group_id=new_group_id(), source=req.source,
                                    page=page)
    return await _answer(request, jobs, 202)


async def _answer(request: web.Request, jobs: list[JobRecord], status: int,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A single job's summary, or the group a job belongs to (a replayed variations submit too)."""
    group_id = jobs[0].group_id
    if group_id is None:
        return json_response(JobSummary.from_record(jobs[0]), status,
                             headers={"Location": f"/jobs/{jobs[0].id}", **(headers or {})})
    if len(jobs) == 1:
        jobs = await request.app[RUNNER].group(group_id)
    return json_response(JobGroup.from_records(group_id, jobs), status,
                         headers={"Location": f"/groups/{group_id}", **(headers or {})})


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidField(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.",
                           {"field": IDEMPOTENCY_HEADER, "limit": MAX_KEY_LENGTH})
    return key


@routes.get("/jobs")
@operation(
    "Recent jobs, newest first, a page at a time", {200: JobListing}, errors=(JobNotFound,),
    description=f"Summaries (no workflow), up to `limit` ({LIST_LIMIT} by default, at most {LIST_MAX}); with "
                f"?full=1 each job in full (the JobListFull shape), {FULL_LIMIT} by default and at most "
                f"{FULL_MAX} a page, whatever `limit` asks (a workflow may be megabytes). `nextBefore` names the next, older page: pass it as "
                "?before=.",
    query=(Query("status", {"enum": list(JOB_STATUSES)}, "only jobs in this state"),
           Query("limit", {"type": "integer", "minimum": 1, "maximum": LIST_MAX},
                 f"jobs per page (default {LIST_LIMIT}; with full=1 default {FULL_LIMIT}, cut to {FULL_MAX})"),
           Query("group", {"type": "string", "maxLength": 64}, "only the jobs of this group (variations)"),
           Query("source", {"type": "string", "pattern": SOURCE_PATTERN},
                 "only the jobs submitted with this `source` (`studio`, `generate`, ...; `api`: those that said none)"),
           Query("before", {"type": "string", "maxLength": 64}, "a job id (a page's nextBefore): only older jobs"),
           Query("full", {"type": "boolean", "default": False}, "1|true: each job with its workflow")),
)
async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise InvalidField(f"status must be one of {', '.join(JOB_STATUSES)}.", {"field": "status", "value": status})
    full = request.query.get("full", "0").lower()
    if full not in TRUE + FALSE:
        raise InvalidField("full must be 1, 0, true or false.", {"field": "full", "value": full})
    limit = query_limit(request, FULL_LIMIT if full in TRUE else LIST_LIMIT, LIST_MAX)
    if full in TRUE:
        limit = min(limit, FULL_MAX)  # a larger page of full jobs is cut to FULL_MAX; nextBefore goes on
    group = request.query.get("group") or None
    if group is not None and len(group) > 64:
        raise InvalidField("group must be a group id (at most 64 characters).", {"field": "group"})
    source = request.query.get("source")
    if source is not None and not re.fullmatch(SOURCE_PATTERN, source):
        raise InvalidField("source must be a job source such as studio, generate, grid, sweep or api (lower-case "
                           "letters, digits, - and _).", {"field": "source", "value": source[:64]})
    before = request.query.get("before")
    if before is not None and (len(before) > 64 or not await request.app[STORE].exists(before)):
        raise JobNotFound(f"No job with id {before!r} to page before (?before= takes a page's nextBefore).",
                          {"jobId": before, "field": "before"})
    jobs = await request.app[RUNNER].list(status, limit, group, source, before)
    next_before = jobs[-1].id if len(jobs) == limit else None
    if full in TRUE:
        async with request.app[FULL_LISTING_LOCK]:
            return await asyncio.to_thread(full_listing, jobs, next_before)
    return json_response(JobList(jobs=[JobSummary.from_record(j) for j in jobs], next_before=next_before))


def full_listing(jobs: list[JobRecord], next_before: str | None) -> web.Response:
    """A JobListFull body, built off the event loop and serialized one job at a time: one `model_dump_json`
    of megabytes of workflows holds the GIL, and so the event loop (`/health`), for its whole length
    (126 ms for 20 x 1 MB); job by job, the loop gets its turn between them. The same bytes as
    `JobListFull(...).model_dump_json(by_alias=True)`."""
    parts = [Job.from_record(j).model_dump_json(by_alias=True) for j in jobs]
    tail = JobListFull(jobs=[], next_before=next_before).model_dump_json(by_alias=True)
    assert tail.startswith('{"jobs":[]')
    return web.Response(text='{"jobs":[' + ",".join(parts) + "]" + tail[len('{"jobs":[]'):],
                        content_type="application/json")


@routes.get("/jobs/{id}")
@operation("One job in full, with its filled workflow", {200: Job}, errors=(JobNotFound,))
async def get_job(request: web.Request) -> web.Response:
    job = await request.app[RUNNER].get(request.match_info["id"])
    (answer,) = await with_likeness(request.app, [Job.from_record(job)], {job.id: job.output_file})
    return json_response(answer)


@routes.get("/jobs/{id}/image")
@operation("The job's PNG (or with ?size its thumbnail)", {200: None, 304: None}, binary=IMAGE_TYPES,
           query=(SIZE_QUERY,), response_headers=THUMB_HEADERS, errors=(JobNotFound, NotFound, JobNotFinished))
async def get_image(request: web.Request) -> web.StreamResponse:
    job = await request.app[RUNNER].get(request.match_info["id"])
    if job.status != "succeeded" or not job.output_file:
        raise JobNotFinished(f"Job {job.id} is {job.status}; it has no image.", {"jobId": job.id, "status": job.status})
    path = Path(job.output_file)
    if not await asyncio.to_thread(path.is_file):
        # Checked here: FileResponse would answer a bare text 404 after the error middleware has run.
        raise NotFound(f"The image of job {job.id} is no longer on disk ({path}).", {"jobId": job.id})
    return await image_response(request, path)


@routes.get("/jobs/{id}/upscaled")
@operation("The job's image upscaled for print (PNG)", {200: None}, binary="image/png",
           description="The print upscale of a job submitted with `upscaleModel`: the model's scale times the "
                       "image's size. 404 not_found for a job without one.",
           errors=(JobNotFound, NotFound, JobNotFinished))
async def get_upscaled(request: web.Request) -> web.StreamResponse:
    job = await request.app[RUNNER].get(request.match_info["id"])
    if job.status != "succeeded":
        raise JobNotFinished(f"Job {job.id} is {job.status}; it has no image.", {"jobId": job.id, "status": job.status})
    if not job.upscaled_file:
        raise NotFound(f"Job {job.id} has no upscaled image: it was submitted without upscaleModel.",
                       {"jobId": job.id})
    path = Path(job.upscaled_file)
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"The upscaled image of job {job.id} is no longer on disk ({path}).", {"jobId": job.id})
    return web.FileResponse(path, headers={"Content-Type": "image/png"})


@routes.get("/jobs/{id}/preview")
@operation("The job's latest live preview (a small JPEG)", {200: None}, binary="image/jpeg",
           description="The newest preview a running job sent (also in its job.preview events); kept for the "
                       "last 32 jobs that had one. 404 preview_not_found before the first one, with previews "
                       "off, or when ComfyUI runs without --preview-method.",
           errors=(JobNotFound, PreviewNotFound),
           response_headers={200: {"X-Preview-Step": "the sampler step it shows",
                                   "X-Preview-Seq": "1, 2, ... for each preview of the job"}})
async def get_preview(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    job = await runner.get(request.match_info["id"])
    preview = runner.previews.latest(job.id)
    if preview is None:
        why = "previews are off (setting previews)" if not runner.previews.enabled else \
            "none has arrived yet (ComfyUI sends them only with --preview-method)"
        raise PreviewNotFound(f"Job {job.id} has no live preview: {why}.",
                              {"jobId": job.id, "status": job.status})
    return web.Response(body=preview.jpeg, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Preview-Step": str(preview.step),
                                 "X-Preview-Seq": str(preview.seq)})


@routes.post("/jobs/{id}/cancel")
@operation("Cancel a queued or running job", {200: JobSummary, 202: JobSummary},
           description="200: a queued job is cancelled at once. 202: a running job is being interrupted; "
                       "it turns cancelled when the backend confirms (watch /events or GET /jobs/{id}).",
           errors=(JobNotFound, InvalidState))
async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[RUNNER].cancel(request.match_info["id"])
    return json_response(JobSummary.from_record(job), 202 if job.status == "running" else 200)
