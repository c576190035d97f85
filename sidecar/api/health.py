"""GET /health: the daemon, its backend, the device, the queue and any training run, at a glance."""

from __future__ import annotations

from aiohttp import web

from sidecar import __version__
from sidecar.api.keys import BACKEND, DEVICE, POOL, PROFILE, RUNNER, STARTUP_WARNINGS, TEMPLATES
from sidecar.api.operations import operation
from sidecar.api.responses import (
    BackendStatus, Health, LoadedModels, ProcessMemory, TrainingSummary, WorkerState, json_response,
)
from sidecar.api.queue import queue_state
from sidecar.memory import process_memory

routes = web.RouteTableDef()


@routes.get("/health")
@operation("Daemon, backend and device status", {200: Health})
async def health(request: web.Request) -> web.Response:
    app = request.app
    h = await app[BACKEND].health()
    templates = app[TEMPLATES]
    runner = app[RUNNER]
    warnings = [*app[STARTUP_WARNINGS], *h.warnings]
    if templates.last_error:
        warnings.append(f"template reload failed, using the last good set: {templates.last_error}")
    if not runner.worker_alive:
        warnings.append(f"the job worker is not running ({runner.worker_error or 'stopped'}); restarting it: "
                        "queued jobs wait until it is back")
    training = app[DEVICE].training.summary()
    return json_response(Health(
        status="ok" if h.available and runner.worker_alive else "degraded",
        comfyui=h.engine == "comfyui" and h.available,
        mps=h.device == "mps",
        engine=h.engine,
        engine_available=h.available,
        device=h.device,
        dtypes=h.dtypes,
        profile=app[PROFILE].name,
        queue_depth=app[RUNNER].queue_depth,
        queue=queue_state(app[RUNNER]),
        running_job=app[RUNNER].running_job,
        worker=WorkerState(running=runner.worker_alive, restarts=runner.worker_restarts, error=runner.worker_error),
        training=TrainingSummary.model_validate(training) if training is not None else None,
        templates=sorted(templates.templates),
        template_error=templates.last_error,
        warnings=warnings,
        version=__version__,
        loaded=LoadedModels.model_validate(h.loaded) if h.loaded is not None else None,
        memory=ProcessMemory.model_validate(process_memory()),
        backend=h.extra,
        backends=_backends(app, h),
    ))


async def backends_status(app: web.Application) -> list[BackendStatus]:
    """The backends as /health lists them (GET /backends too)."""
    return _backends(app, await app[BACKEND].health() if app.get(POOL) is None else None)


def _backends(app: web.Application, h) -> list[BackendStatus]:
    runner = app[RUNNER]
    pool = app.get(POOL)
    if pool is None:
        return [BackendStatus(
            name="local", kind=h.engine if h.engine == "embedded" else f"comfyui {h.extra.get('mode', 'attach')}ed",
            state="up" if h.available else "down", reason=None if h.available else "; ".join(h.warnings) or None,
            local=True, url=h.extra.get("url"), device=h.device, profile=app[PROFILE].name, tags=[],
            running=runner.running_job, queue=runner.queue_depth, seconds_per_step=None,
            loaded_checkpoint=(h.loaded or {}).get("checkpoint"), jobs_run=0, ssh=None)]
    queued = runner.planned()
    return [BackendStatus.model_validate({**s, "queue": queued.get(s["name"], 0)}) for s in pool.status()]
