"""`POST /dataset/build`: a training folder from reference images, through the daemon, for the studio.
The steps are `sidecar dataset`'s own commands, run as one task (`sidecar.api.tasks`): each sheet's
figures found (`crop --auto`, the regions kept in `<out>/regions/`) and cut into squares (`crop`),
horizontal flips (`flip`), caption proposals (`caption --auto`) or an empty caption table (`caption
--init`), and optionally a regularisation set rendered through this daemon (`reg`, jobs with source
`dataset`) into a sibling folder. The Dataset view then shows the folder, its findings and proposals.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Literal

from aiohttp import web
from PIL import Image, UnidentifiedImageError
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.operations import operation
from sidecar.api.responses import json_response
from sidecar.api.tasks import TASKS, TaskInfo, own_url
from sidecar.errors import DatasetInvalid, InvalidState
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
PathText = Annotated[str, Field(min_length=1, max_length=4096)]


class RegSet(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    count: int = Field(ge=1, le=1000, description="images in the set (100-200 recommended)")
    prompt: str = Field(min_length=1, max_length=1000, description="a generic prompt for the class, no trigger word")
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(512, ge=64, le=4096)
    out: PathText | None = Field(None, description="absolute path of its folder (default: `<out>-reg` beside it)")


class BuildRequest(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    sheets: list[PathText] = Field(min_length=1, max_length=20,
                                   description="absolute paths of the reference images (sheets) to cut figures from")
    out: PathText = Field(description="absolute path of the training folder to make (new, or empty)")
    size: int = Field(512, ge=64, le=4096, description="square side of each crop in pixels")
    fit: Literal["pad", "crop"] = Field("pad", description="pad: the whole figure on a square; crop: fill it")
    flip: bool = Field(True, description="add a horizontal flip of every crop")
    captions: Literal["propose", "table", "none"] = Field(
        "propose", description="propose: caption proposals (a tagger in models/taggers/, else the vision model); "
                               "table: an empty captions.csv to fill in; none: leave captions for later")
    trigger: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^,\n]+$")] | None = Field(
        None, description="the trigger word captions start with (default: the trigger_word setting)")
    reg: RegSet | None = Field(None, description="also render a regularisation set (base model, no LoRA)")


def _slug(stem: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") or "sheet"


def check_inputs(req: BuildRequest) -> tuple[list[Path], Path, Path | None]:
    """The sheets (readable images), the output folder (new or empty) and the reg folder, or a 400."""
    sheets = []
    for raw in req.sheets:
        path = Path(raw)
        if not path.is_absolute() or not path.is_file():
            raise DatasetInvalid(f"sheets: {raw} is not an image file on this machine (give absolute paths).",
                                 {"field": "sheets", "file": raw})
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError):
            raise DatasetInvalid(f"sheets: {path.name} is not an image PIL can read.",
                                 {"field": "sheets", "file": raw}) from None
        sheets.append(path)
    if len({_slug(p.stem) for p in sheets}) != len(sheets):
        raise DatasetInvalid("sheets: two sheets have the same name; their crops would collide.", {"field": "sheets"})
    out = Path(req.out)
    if not out.is_absolute() or not out.parent.is_dir() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise DatasetInvalid(f"out: {req.out} must be the absolute path of a new or empty folder (its parent existing).",
                             {"field": "out", "value": req.out})
    reg = None
    if req.reg is not None:
        reg = Path(req.reg.out) if req.reg.out else out.with_name(f"{out.name}-reg")
        if not reg.is_absolute() or reg == out or not reg.parent.is_dir():
            raise DatasetInvalid(f"reg.out: {reg} must be the absolute path of a folder beside the set.",
                                 {"field": "reg.out", "value": str(reg)})
    return sheets, out, reg


def commands(req: BuildRequest, sheets: list[Path], out: Path, reg: Path | None, url: str) -> list[list[str]]:
    """`sidecar dataset ...` arguments, in the order a terminal would run them."""
    steps: list[list[str]] = []
    regions = out / "regions"
    for sheet in sheets:
        region_file = str(regions / f"{_slug(sheet.stem)}.regions.toml")
        steps.append(["dataset", "crop", str(sheet), "--auto", "--regions", region_file])
        steps.append(["dataset", "crop", str(sheet), "--regions", region_file, "--out", str(out), "--size",
                      str(req.size), "--fit", req.fit])
    trigger = ["--trigger", req.trigger] if req.trigger else []
    if req.captions == "propose":
        steps.append(["dataset", "caption", str(out), "--auto", *trigger])
    elif req.captions == "table":
        steps.append(["dataset", "caption", str(out), "--init", *trigger])
    if req.flip:  # after the captions: a flip takes its source's caption when it has one
        steps.append(["dataset", "flip", str(out)])
    if req.reg is not None and reg is not None:
        steps.append(["dataset", "reg", "--count", str(req.reg.count), "--prompt", req.reg.prompt, "--out", str(reg),
                      "--width", str(req.reg.width), "--height", str(req.reg.height), "--url", url])
    return steps


@routes.post("/dataset/build")
@operation("Build a training folder from reference images through the daemon (`sidecar dataset` steps)",
           {202: TaskInfo}, request=BuildRequest,
           description="Runs, as one daemon task, what a terminal would: `dataset crop --auto` and `dataset crop` "
                       "per sheet, `dataset caption --auto` (or `--init`), `dataset flip` and, with `reg`, `dataset "
                       "reg` through this daemon. Follow it with GET /tasks/{taskId}; the folder then opens in the "
                       "Dataset view (GET /dataset?dir=).",
           errors=(DatasetInvalid, InvalidState))
async def build(request: web.Request) -> web.Response:
    req = await parse_body(request, BuildRequest)
    sheets, out, reg = await asyncio.to_thread(check_inputs, req)
    tasks = request.app[TASKS]
    if (busy := tasks.active("dataset", str(out))) is not None:
        raise InvalidState(f"{out} is already being built (task {busy.id}).", {"taskId": busy.id})
    await asyncio.to_thread(out.mkdir, exist_ok=True)  # taken: a second build of it finds it no longer empty
    steps = commands(req, sheets, out, reg, own_url(request))
    task = tasks.start("dataset", str(out), steps, {"dir": str(out), "datasetUrl": f"/dataset?dir={out}",
                                                    **({"regDir": str(reg)} if reg else {})})
    return json_response(TaskInfo.of(task), 202, headers={"Location": f"/tasks/{task.id}"})
