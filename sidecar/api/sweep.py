"""A training run's checkpoint sweep, for the studio's LoRAs view: `sidecar loras sweep` leaves
`contact-sheet.png` and `index.json` in `<run folder>/sweep/` (its default folder); these routes say
whether there is one and serve the sheet."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field

from sidecar.api.operations import operation
from sidecar.api.responses import Out, json_response
from sidecar.api.training import TRAINING
from sidecar.errors import NotFound, TrainingNotFound

routes = web.RouteTableDef()
SHEET, INDEX = "contact-sheet.png", "index.json"


class SweepInfo(Out):
    contact_sheet_url: str | None = Field(description="null: no sweep of this run in its default folder")
    index: dict[str, Any] | None = Field(description="the sweep's index.json: prompts, seeds, columns (checkpoints)")


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


@routes.get("/loras/{id}/sweep")
@operation("The run's checkpoint sweep (contact sheet and index), when `sidecar loras sweep` made one",
           {200: SweepInfo}, errors=(TrainingNotFound,))
async def sweep(request: web.Request) -> web.Response:
    run = await request.app[TRAINING].get(request.match_info["id"])
    has_sheet, index = await asyncio.to_thread(_read, sweep_dir(run.output_dir))
    return json_response(SweepInfo(contact_sheet_url=f"/loras/{run.id}/sweep/{SHEET}" if has_sheet else None,
                                   index=index))


@routes.get("/loras/{id}/sweep/" + SHEET)
@operation("The run's sweep contact sheet", {200: None}, binary="image/png", errors=(TrainingNotFound, NotFound))
async def sheet(request: web.Request) -> web.StreamResponse:
    run = await request.app[TRAINING].get(request.match_info["id"])
    path = sweep_dir(run.output_dir) / SHEET
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"Run {run.id} has no sweep contact sheet in {path.parent}.", {"runId": run.id})
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})
