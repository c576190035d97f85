"""Queue controls: pause and resume the queue, retry a finished job, look at and cancel a group of
variations. Parse, call the runner, answer through the response models.

Groups are made by `POST /jobs` with `variations`; they are cancelled with `POST /groups/{id}/cancel`
(queued jobs are dropped at once, a running one is interrupted), the same verb as a job's cancel.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.api.keys import BUILDER, DEVICE, RUNNER
from sidecar.api.likeness import with_likeness
from sidecar.api.operations import operation
from sidecar.api.responses import JobGroup, JobSummary, QueueState, json_response
from sidecar.errors import (
    CheckpointNotFound, ComfyUnavailable, ControlnetNotFound, DiskFull, EngineUnavailable, GroupNotFound,
    InitImageInvalid, InvalidState, JobNotFound, LoraNotFound, NodeNotSupported, PoseImageInvalid, QueueFull, SamplerNotSupported,
    TrainingInProgress, WorkflowInvalid,
)
from sidecar.jobs.queue import ORDER_SHOWN
from sidecar.jobs.runner import JobRunner
from sidecar.jobs.variations import retry_refusal, retry_request

routes = web.RouteTableDef()


def queue_state(runner: JobRunner) -> QueueState:
    return QueueState(paused=runner.queue.paused, paused_at=runner.queue.paused_at, depth=runner.queue_depth,
                      running_job=runner.running_job, order=list(runner.queue)[:ORDER_SHOWN])


@routes.get("/queue")
@operation("The queue: paused or not, and the waiting jobs in the order they will run", {200: QueueState})
async def get_queue(request: web.Request) -> web.Response:
    return json_response(queue_state(request.app[RUNNER]))


@routes.post("/queue/pause")
@operation("Pause the queue: a running job finishes, nothing new starts (kept across a restart)",
           {200: QueueState}, errors=(DiskFull,))
async def pause_queue(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    await runner.pause()
    return json_response(queue_state(runner))


@routes.post("/queue/resume")
@operation("Resume the queue: waiting jobs start again, in order", {200: QueueState}, errors=(DiskFull,))
async def resume_queue(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    await runner.resume()
    return json_response(queue_state(runner))


@routes.post("/jobs/{id}/retry")
@operation(
    "Submit a finished job again: a new job with the same request (seed included), retryOf recorded",
    {202: JobSummary},
    description="The job must have ended (succeeded, failed or cancelled); it is built again as a new "
                "submit is, so a model or file gone since is refused now (an img2img job whose init job was "
                "removed: init_image_invalid). The new job keeps the group.",
    errors=(JobNotFound, InvalidState, LoraNotFound, CheckpointNotFound, ControlnetNotFound, PoseImageInvalid,
            InitImageInvalid,
            NodeNotSupported, SamplerNotSupported, WorkflowInvalid, TrainingInProgress, QueueFull,
            ComfyUnavailable, EngineUnavailable, DiskFull),
    response_headers={202: {"Location": "the new job's URL"}},
)
async def retry_job(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    old = await runner.get(request.match_info["id"])
    req = retry_request(old)
    if runner.pool is None:  # with several backends a training stops only this machine's (the runner decides)
        request.app[DEVICE].training.refuse_if_training()
    try:
        built = await request.app[BUILDER].build(req)
    except InitImageInvalid as exc:
        raise retry_refusal(old, exc) from None
    # A retry of a page job is one too: it becomes that page's next version when it succeeds.
    job = await runner.submit(built, retry_of=old.id, group_id=old.group_id, source=old.source, page=old.page)
    return json_response(JobSummary.from_record(job), 202, headers={"Location": f"/jobs/{job.id}"})


@routes.get("/groups/{id}")
@operation("The jobs of a group of variations, in the order they were queued", {200: JobGroup},
           errors=(GroupNotFound,))
async def get_group(request: web.Request) -> web.Response:
    group_id = request.match_info["id"]
    records = await request.app[RUNNER].group(group_id)
    group = JobGroup.from_records(group_id, records)
    scored = await with_likeness(request.app, group.jobs, {r.id: r.output_file for r in records})
    return json_response(group.model_copy(update={"jobs": scored}))


@routes.post("/groups/{id}/cancel")
@operation("Cancel every unfinished job of a group", {200: JobGroup},
           description="Queued jobs are cancelled at once (none of them starts afterwards); a running one is "
                       "interrupted and turns cancelled when the backend confirms. Finished jobs are left as "
                       "they are. Cancelling a group with nothing left to cancel answers the group unchanged.",
           errors=(GroupNotFound,))
async def cancel_group(request: web.Request) -> web.Response:
    group_id = request.match_info["id"]
    jobs = await request.app[RUNNER].cancel_group(group_id)
    return json_response(JobGroup.from_records(group_id, jobs))
