"""GET /doctor: `sidecar doctor`'s checks, run by the daemon for the studio's Doctor view: the same list
(`sidecar.doctor.every`), row for row, with the same fixes; the network probes, torch's device query and
Ollama's answer run in a worker thread."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from aiohttp import web
from pydantic import Field

from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operation
from sidecar.api.responses import Out, json_response

routes = web.RouteTableDef()


class DoctorCheck(Out):
    name: str
    status: str = Field(description="ok, warn, fail or skip")
    detail: str
    fix: str = Field(description="what to do when it is not ok")
    required: bool


class DoctorReport(Out):
    ok: bool = Field(description="nothing required is missing (what `sidecar doctor` exits 0 on); optional rows "
                                 "(Ollama, the prompt and vision models, the caption tagger) may still warn")
    checks: list[DoctorCheck]


@routes.get("/doctor")
@operation("The doctor's report: what the stack needs, what is missing, and the fix for each", {200: DoctorReport})
async def doctor(request: web.Request) -> web.Response:
    from sidecar.doctor.every import every_check  # the doctor's imports (plistlib, launchd probes) only when asked

    checks = await asyncio.to_thread(every_check, request.app[SETTINGS])
    return json_response(DoctorReport(ok=not any(c.status == "fail" for c in checks),
                                      checks=[DoctorCheck.model_validate(asdict(c)) for c in checks]))
