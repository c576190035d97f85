"""GET /health, GET /loras (installed LoRAs) and GET /openapi.json."""

from __future__ import annotations

import asyncio
import functools

from aiohttp import web

from sidecar import __version__
from sidecar.api.keys import BACKEND, DEVICE, PROFILE, RUNNER, STARTUP_WARNINGS, TEMPLATES
from sidecar.api.openapi import build_openapi
from sidecar.memory import process_memory
from sidecar.training.lora_metadata import list_loras, list_served_loras

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    app = request.app
    backend = app[BACKEND]
    h = await backend.health()
    templates = app[TEMPLATES]
    runner = app[RUNNER]
    warnings = [*app[STARTUP_WARNINGS], *h.warnings]
    if templates.last_error:
        warnings.append(f"template reload failed, using the last good set: {templates.last_error}")
    if not runner.worker_alive:
        warnings.append(f"the job worker is not running ({runner.worker_error or 'stopped'}); restarting it: "
                        "queued jobs wait until it is back")
    body = {
        "status": "ok" if h.available and runner.worker_alive else "degraded",
        "comfyui": h.engine == "comfyui" and h.available,
        "mps": h.device == "mps",
        "engine": h.engine,
        "engineAvailable": h.available,
        "device": h.device,
        "dtypes": h.dtypes,
        "profile": app[PROFILE].name,
        "queueDepth": app[RUNNER].queue_depth,
        "runningJob": app[RUNNER].running_job,
        "worker": {"running": runner.worker_alive, "restarts": runner.worker_restarts,
                   "error": runner.worker_error},
        "training": app[DEVICE].training.summary(),
        "templates": sorted(templates.templates),
        "templateError": templates.last_error,
        "warnings": warnings,
        "version": __version__,
        "loaded": h.loaded,
        "memory": process_memory(),
        "backend": h.extra,
    }
    return web.json_response(body)


@routes.get("/loras")
async def loras(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    directory = backend.models_dir("loras")
    if directory is None:
        # Attached to a ComfyUI: it lists the files and reads their metadata (`model_metadata`).
        names = await backend.list_models("loras") or []
        items = await list_served_loras(names, functools.partial(backend.model_metadata, "loras")
                                        if hasattr(backend, "model_metadata") else None)
    else:
        items = await asyncio.to_thread(list_loras, directory)
    return web.json_response({"loras": items})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())
