"""A training run's checkpoint sweep, for the studio's LoRAs view: `sidecar loras sweep` leaves
`contact-sheet.png` and `index.json` in `<run folder>/sweep/` (its default folder); these routes start
one through the daemon (that very command, as a task: `sidecar.api.tasks`), say whether there is one
and serve the sheet. The pick is promoted through POST /loras/{id}/promote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operation
from sidecar.api.responses import Out, json_response
from sidecar.api.tasks import TASKS, TaskInfo, own_url
from sidecar.api.training import TRAINING
from sidecar.atomic import write_text
from sidecar.errors import InvalidField, InvalidState, NotFound, TrainingNotFound
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
SHEET, INDEX = "contact-sheet.png", "index.json"


class SweepInfo(Out):
    contact_sheet_url: str | None = Field(description="null: no sweep of this run in its default folder")
    index: dict[str, Any] | None = Field(description="the sweep's index.json: prompts, seeds, columns (checkpoints)")
    task: TaskInfo | None = Field(None, description="the sweep the daemon is running (or last ran) for this run")


class SweepRequest(WholeNumbers):
    """POST /loras/{id}/sweep: `sidecar loras sweep RUN`'s options."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    prompts: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        min_length=1, max_length=20, description="the prompts every checkpoint renders (one row each per seed)")
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field([1, 2, 3], min_length=1, max_length=10)
    strength: float | None = Field(None, ge=0, le=2, description="LoRA strength (default: the daemon's)")
    steps: int | None = Field(None, ge=1, le=150)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    baseline: bool = Field(False, description="add a column rendered without any LoRA")


def sweep_dir(output_dir: str) -> Path:
    return Path(output_dir).parent / "sweep"  # where `sidecar loras sweep` writes by default


def _read(folder: Path) -> tuple[bool, dict[str, Any] | None]:
    index = None
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        index = data if isinstance(data, dict) else None
    except (OSError, ValueError):
        pass
    return (folder / SHEET).is_file(), index


def _latest(request: web.Request, run_id: str) -> TaskInfo | None:
    tasks = [t for t in request.app[TASKS].tasks.values() if t.kind == "sweep" and t.subject == run_id]
    return TaskInfo.of(tasks[-1]) if tasks else None


@routes.post("/loras/{id}/sweep")
@operation("Start a checkpoint sweep of a run through the daemon (`sidecar loras sweep`)", {202: TaskInfo},
           request=SweepRequest,
           description="Runs `sidecar loras sweep RUN` as the daemon's task: every saved checkpoint renders the "
                       "prompts and seeds (jobs with source `sweep`), then the contact sheet and index.json land in "
                       "the run's sweep folder (GET /loras/{id}/sweep). Follow it with GET /tasks/{taskId}; promote "
                       "the pick with POST /loras/{id}/promote.",
           errors=(TrainingNotFound, InvalidState, InvalidField))
async def start_sweep(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].get(request.match_info["id"])
    req = await parse_body(request, SweepRequest)
    if run.status in ("queued", "running"):
        raise InvalidState(f"Training run {run.id} is still {run.status}; sweep it once it has ended.",
                           {"runId": run.id, "status": run.status})
    if not run.checkpoints:
        raise InvalidField(f"Training run {run.id} saved no checkpoint to sweep.", {"runId": run.id})
    tasks = request.app[TASKS]
    if (busy := tasks.active("sweep", run.id)) is not None:
        raise InvalidState(f"A sweep of run {run.id} is already running (task {busy.id}).",
                           {"runId": run.id, "taskId": busy.id})
    folder = sweep_dir(run.output_dir)
    prompts_file = request.app[SETTINGS].data_dir / "tasks" / f"sweep-{run.id}.prompts.txt"
    await asyncio.to_thread(write_text, prompts_file, "".join(f"{p.replace(chr(10), ' ')}\n" for p in req.prompts))
    url = own_url(request)
    argv = ["loras", "sweep", run.id, "--prompts", str(prompts_file), "--seeds", ",".join(map(str, req.seeds)),
            "--url", url]
    for flag, value in (("--strength", req.strength), ("--steps", req.steps), ("--width", req.width),
                        ("--height", req.height)):
        if value is not None:
            argv += [flag, str(value)]
    if req.baseline:
        argv.append("--baseline")
    task = tasks.start("sweep", run.id, [argv], {"sweepUrl": f"/loras/{run.id}/sweep", "folder": str(folder)})
    return json_response(TaskInfo.of(task), 202, headers={"Location": f"/tasks/{task.id}"})


@routes.get("/loras/{id}/sweep")
@operation("The run's checkpoint sweep (contact sheet and index), when `sidecar loras sweep` made one",
           {200: SweepInfo}, errors=(TrainingNotFound,))
async def sweep(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].get(request.match_info["id"])
    has_sheet, index = await asyncio.to_thread(_read, sweep_dir(run.output_dir))
    return json_response(SweepInfo(contact_sheet_url=f"/loras/{run.id}/sweep/{SHEET}" if has_sheet else None,
                                   index=index, task=_latest(request, run.id)))


@routes.get("/loras/{id}/sweep/" + SHEET)
@operation("The run's sweep contact sheet", {200: None}, binary="image/png", errors=(TrainingNotFound, NotFound))
async def sheet(request: web.Request) -> web.StreamResponse:
    run = await request.app[TRAINING].get(request.match_info["id"])
    path = sweep_dir(run.output_dir) / SHEET
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"Run {run.id} has no sweep contact sheet in {path.parent}.", {"runId": run.id})
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})
