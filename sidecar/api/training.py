"""Training routes: POST /loras/train, GET /loras/runs, GET /loras/{id}/status, /loss and /samples/{file}, POST
/loras/{id}/cancel,
/resume, /promote, /stage and /unstage. The training manager (queue, device gate, trainers) is built here and started and
stopped with the app through `cleanup_ctx`; handlers only parse, call it and answer with its
`TrainingRun` models.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from sidecar.api.errors import parse_body, query_int, query_limit
from sidecar.api.keys import BACKEND, DEVICE, EVENTS, LIKENESS, PROFILE, SETTINGS, TRAINING_STORE
from sidecar.api.operations import Query, operation
from sidecar.api.responses import json_response
from sidecar.dataprep.gate import require_ready
from sidecar.errors import (
    BatchSizeNotSupported, CheckpointFileMissing, CheckpointNotFound, DatasetInvalid, DatasetNotReady, EngineUnavailable,
    FamilyNotSupported, InvalidState,
    LoraExists, NoOfferUnderLimits, NotFound, RemoteNotConfigured, RemoteUnavailable, ResolutionExceedsProfile,
    TrainingInProgress, TrainingNotFound,
)
from sidecar.remote.wire import TrainEstimate
from sidecar.training.adapters import adapter_for
from sidecar.training.loss_history import loss_file, read_history
from sidecar.training.manager import TrainingManager
from sidecar.training.wire import (
    LossHistory, LossPointInfo, Promoted, PromoteRequest, StagedLora, StageRequest, TrainingRun, TrainingRunList, TrainRequest, UnstagedLoras,
    UnstageRequest,
)

TRAINING = web.AppKey("training", TrainingManager)
SAMPLE_TYPES = ("image/png", "image/jpeg")
MAX_LOSS_POINTS = 5000

routes = web.RouteTableDef()


def setup_routes(app: web.Application) -> None:
    """Register the training routes and their background resources on the app."""
    async def gate(dataset_dir: Path, trigger: str, preset: str | None, family: str) -> None:
        # The likeness judge is the app's (the project's references); PIL and the judge run in a thread.
        await asyncio.to_thread(require_ready, dataset_dir, trigger, preset, family, app.get(LIKENESS))

    app[TRAINING] = TrainingManager(app[SETTINGS], app[PROFILE], app[DEVICE], app[EVENTS], app[TRAINING_STORE],
                                    app[BACKEND], gate=gate)
    app.cleanup_ctx.append(_training_ctx)
    app.router.add_routes(routes)


async def _training_ctx(app: web.Application) -> AsyncIterator[None]:
    # Registered after the job store's and runner's contexts: starts after them, stops (trainer
    # included) before them; the training store rides on the job store's connection.
    await app[TRAINING_STORE].open()
    await app[TRAINING].start()
    yield
    await app[TRAINING].stop()
    await app[TRAINING_STORE].close()


@routes.post("/loras/train")
@operation("Submit a LoRA training run", {202: TrainingRun}, request=TrainRequest,
           errors=(BatchSizeNotSupported, ResolutionExceedsProfile, DatasetInvalid, DatasetNotReady, CheckpointNotFound,
                   TrainingInProgress, EngineUnavailable, RemoteNotConfigured, RemoteUnavailable, FamilyNotSupported),
           response_headers={202: {"Location": "the run's status URL"}})
async def train(request: web.Request) -> web.Response:
    req = await parse_body(request, TrainRequest)
    run = await request.app[TRAINING].submit(req)
    return json_response(run, 202, headers={"Location": f"/loras/{run.id}/status"})


@routes.post("/loras/estimate")
@operation("What a run would take here and on a rented GPU, and cost, without renting anything",
           {200: TrainEstimate}, request=TrainRequest,
           errors=(BatchSizeNotSupported, ResolutionExceedsProfile, DatasetInvalid, EngineUnavailable,
                   RemoteNotConfigured, NoOfferUnderLimits, RemoteUnavailable, FamilyNotSupported))
async def estimate(request: web.Request) -> web.Response:
    req = await parse_body(request, TrainRequest)
    return json_response(await request.app[TRAINING].estimate(req))


@routes.get("/loras/runs")
@operation("Recent training runs, newest first", {200: TrainingRunList},
           query=(Query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),))
async def list_runs(request: web.Request) -> web.Response:
    limit = query_limit(request)
    return json_response(TrainingRunList(runs=await request.app[TRAINING].list(limit)))


@routes.get("/loras/{id}/status")
@operation("A training run: status, step, loss, ETA, checkpoints, log tail, error", {200: TrainingRun},
           errors=(TrainingNotFound,))
async def status(request: web.Request) -> web.Response:
    return json_response(await request.app[TRAINING].get(request.match_info["id"]))


@routes.get("/loras/{id}/loss")
@operation("A run's loss by step, live or finished (from the run's loss.csv), for a chart",
           {200: LossHistory}, errors=(TrainingNotFound,),
           query=(Query("points", {"type": "integer", "minimum": 2, "maximum": MAX_LOSS_POINTS, "default": 500},
                        "at most this many points, spread evenly over the run"),))
async def loss(request: web.Request) -> web.Response:
    most = query_int(request, "points", 500, low=2, high=MAX_LOSS_POINTS)
    run = await request.app[TRAINING].get(request.match_info["id"])
    points, logged = await asyncio.to_thread(read_history, loss_file(run.output_dir), most)
    return json_response(LossHistory(run_id=run.id, steps_logged=logged,
                                     points=[LossPointInfo(step=p.step, loss=p.loss, smoothed=p.smoothed)
                                             for p in points]))


@routes.get("/loras/{id}/samples/{file}")
@operation("An image the trainer sampled while it trained (a name from `checkpoints[].samples`)", {200: None},
           binary=SAMPLE_TYPES, errors=(TrainingNotFound, NotFound))
async def sample(request: web.Request) -> web.StreamResponse:
    run = await request.app[TRAINING].get(request.match_info["id"])
    name = request.match_info["file"]
    listed = {f for c in run.checkpoints for f in c.samples}
    if name not in listed:  # only what the run lists: never a path of the caller's choosing
        raise NotFound(f"Training run {run.id} has no sample {name!r}.", {"runId": run.id, "file": name})
    folder = adapter_for(run.params.trainer or "kohya").samples_dir(Path(run.output_dir))
    path = folder / name
    if await asyncio.to_thread(path.is_symlink) or not await asyncio.to_thread(path.is_file):
        raise NotFound(f"The sample {name} of run {run.id} is no longer on disk ({path}).",
                       {"runId": run.id, "file": name})
    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return web.FileResponse(path, headers={"Content-Type": kind})


@routes.post("/loras/{id}/cancel")
@operation("Cancel a run (the trainer's process group is stopped; checkpoints are kept)",
           {200: TrainingRun, 202: TrainingRun},
           description="200: a queued run is cancelled at once. 202: a running run is being stopped.",
           errors=(TrainingNotFound, InvalidState))
async def cancel(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].cancel(request.match_info["id"])
    return json_response(run, 202 if run.status == "running" else 200)


@routes.post("/loras/{id}/resume")
@operation("Continue an interrupted, cancelled or failed run from its last saved state",
           {200: TrainingRun, 202: TrainingRun},
           description="202: queued again. 200: it had already trained every step; it is marked succeeded.",
           errors=(TrainingNotFound, InvalidState, TrainingInProgress, EngineUnavailable),
           response_headers={202: {"Location": "the run's status URL"}})
async def resume(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].resume(request.match_info["id"])
    return json_response(run, 202 if run.status == "queued" else 200,
                         headers={"Location": f"/loras/{run.id}/status"})


@routes.post("/loras/{id}/promote")
@operation("Install a checkpoint of the run (default: its final LoRA) into the LoRA folder generation uses",
           {201: Promoted, 200: Promoted}, request=PromoteRequest,
           description="201: installed. 200: the same file already was. Never overwrites.",
           errors=(TrainingNotFound, InvalidState, LoraExists, CheckpointFileMissing))
async def promote(request: web.Request) -> web.Response:
    req = await parse_body(request, PromoteRequest)
    done = await request.app[TRAINING].promote(request.match_info["id"], req)
    return json_response(done, 200 if done.already_installed else 201)


@routes.post("/loras/{id}/stage")
@operation("Make a checkpoint of the run loadable by jobs (a sweep's columns) under a staged loraId",
           {201: StagedLora, 200: StagedLora}, request=StageRequest,
           description="201: linked into the LoRA folder as `sweep--<outputName>-<run8>-step<N>` (not listed by "
                       "GET /loras). 200: it already was. Undo with POST /loras/{id}/unstage.",
           errors=(TrainingNotFound, InvalidState, CheckpointFileMissing))
async def stage(request: web.Request) -> web.Response:
    req = await parse_body(request, StageRequest)
    done = await request.app[TRAINING].stage(request.match_info["id"], req)
    return json_response(done, 200 if done.already_staged else 201)


@routes.post("/loras/{id}/unstage")
@operation("Remove the run's staged checkpoints (one step's, or all) from the LoRA folder",
           {200: UnstagedLoras}, request=UnstageRequest, errors=(TrainingNotFound,))
async def unstage(request: web.Request) -> web.Response:
    req = await parse_body(request, UnstageRequest)
    return json_response(await request.app[TRAINING].unstage(request.match_info["id"], req))
