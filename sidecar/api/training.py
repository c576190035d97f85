"""Training routes: POST /loras/train, GET /loras/runs, GET /loras/{id}/status, POST /loras/{id}/cancel
, /resume and /promote. The training manager (queue, device gate, trainers) is built here and started and
stopped with the app through `cleanup_ctx`; handlers only parse, call it and answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.api.errors import parse_body, query_limit
from sidecar.api.keys import BACKEND, DEVICE, EVENTS, PROFILE, SETTINGS, TRAINING_STORE
from sidecar.api.openapi import Operation, register
from sidecar.training.manager import TrainingManager
from sidecar.training.wire import Promoted, PromoteRequest, TrainingRun, TrainingRunList, TrainRequest

TRAINING = web.AppKey("training", TrainingManager)

routes = web.RouteTableDef()


def setup_routes(app: web.Application) -> None:
    """Register the training routes and their background resources on the app."""
    app[TRAINING] = TrainingManager(app[SETTINGS], app[PROFILE], app[DEVICE], app[EVENTS], app[TRAINING_STORE],
                                    app[BACKEND])
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
async def train(request: web.Request) -> web.Response:
    req = await parse_body(request, TrainRequest)
    run = await request.app[TRAINING].submit(req)
    return web.json_response(run, status=202, headers={"Location": f"/loras/{run['id']}/status"})


@routes.get("/loras/runs")
async def list_runs(request: web.Request) -> web.Response:
    limit = query_limit(request)
    return web.json_response({"runs": await request.app[TRAINING].list(limit)})


@routes.get("/loras/{id}/status")
async def status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[TRAINING].get(request.match_info["id"]))


@routes.post("/loras/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].cancel(request.match_info["id"])
    return web.json_response(run, status=202 if run["status"] == "running" else 200)


@routes.post("/loras/{id}/resume")
async def resume(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].resume(request.match_info["id"])
    return web.json_response(run, status=202 if run["status"] == "queued" else 200,
                             headers={"Location": f"/loras/{run['id']}/status"})


@routes.post("/loras/{id}/promote")
async def promote(request: web.Request) -> web.Response:
    req = await parse_body(request, PromoteRequest)
    done = await request.app[TRAINING].promote(request.match_info["id"], req)
    return web.json_response(done.model_dump(by_alias=True), status=200 if done.already_installed else 201)


register(
    Operation("post", "/loras/train", "Submit a LoRA training run", request=TrainRequest, response=TrainingRun,
              status=202,
              errors={400: "invalid_json, unknown_field, invalid_field, batch_size_not_supported, "
                           "resolution_exceeds_profile, dataset_invalid, checkpoint_not_found",
                      409: "training_in_progress", 503: "engine_unavailable"}),
    Operation("get", "/loras/runs", "Recent training runs, newest first (?limit=)", response=TrainingRunList),
    Operation("get", "/loras/{id}/status", "A training run: status, step, loss, ETA, checkpoints, log tail, error",
              response=TrainingRun, errors={404: "training_not_found"}),
    Operation("post", "/loras/{id}/cancel", "Cancel a run (the trainer's process group is stopped; checkpoints "
              "are kept)", response=TrainingRun, errors={404: "training_not_found", 409: "invalid_state"}),
    Operation("post", "/loras/{id}/resume", "Continue an interrupted, cancelled or failed run from its last "
              "saved state", response=TrainingRun, status=202,
              errors={404: "training_not_found", 409: "invalid_state, training_in_progress"}),
    Operation("post", "/loras/{id}/promote", "Install a checkpoint of the run (default: its final LoRA) into the "
              "LoRA folder generation uses; 201 installed, 200 the same file already was. Never overwrites",
              request=PromoteRequest, response=Promoted, status=201,
              errors={400: "invalid_field, unknown_field", 404: "training_not_found",
                      409: "invalid_state, lora_exists, checkpoint_file_missing"}),
)
