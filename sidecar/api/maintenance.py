"""POST /gc: retention on demand (what `sidecar gc` calls while a daemon holds the data dir).

The daily pass and this route share one `RetentionTask` (one pass at a time). Started after the job
runner, so a pass never sees a job the runner is about to pick up as anything but queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS, STORE
from sidecar.api.models import GcRequest
from sidecar.api.operations import operation
from sidecar.api.responses import GcReport, json_response
from sidecar.jobs.retention import RetentionTask

RETENTION = web.AppKey("retention", RetentionTask)

routes = web.RouteTableDef()

def setup_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[RETENTION] = RetentionTask(app[STORE], settings.jobs_dir, settings.keep_days)
    app.cleanup_ctx.append(_retention_ctx)
    app.router.add_routes(routes)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    app[RETENTION].start()
    yield
    await app[RETENTION].stop()


@routes.post("/gc")
@operation("Remove finished jobs older than keepDays and their images (dryRun: measure only)", {200: GcReport},
           request=GcRequest)
async def gc(request: web.Request) -> web.Response:
    req = await parse_body(request, GcRequest)
    report = await request.app[RETENTION].run_once(req.keep_days, dry_run=req.dry_run)
    return json_response(GcReport.from_report(report))
