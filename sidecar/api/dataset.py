"""A training folder's routes, for the studio's Dataset view: its images with their captions and `dataset
check`'s findings, an image, a caption edited in place, flips of picked images. Parse, call
`sidecar.studio.dataset` in a thread (it reads and writes the artist's files), answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from urllib.parse import urlencode

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.keys import LIKENESS, SETTINGS
from sidecar.api.operations import Query, operation
from sidecar.api.responses import Out, json_response
from sidecar.errors import DatasetInvalid, InvalidField
from sidecar.studio import dataset as files
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
DIR = Query("dir", {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/"},
            "absolute path of the training folder", required=True)


class In(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)


class CaptionEdit(In):
    dir: str = Field(..., min_length=1, max_length=4096, description="absolute path of the training folder",
                     json_schema_extra={"pattern": "^/"})
    name: str = Field(..., min_length=1, max_length=255, description="the image's file name in that folder")
    caption: str = Field(..., max_length=files.MAX_CAPTION, description="one line: trigger, framing, pose, background")


class FlipRequest(In):
    dir: str = Field(..., min_length=1, max_length=4096, json_schema_extra={"pattern": "^/"})
    names: list[str] = Field(..., min_length=1, max_length=500, description="image file names to mirror")
    tag: str = Field("mirrored", min_length=1, max_length=64, pattern=r"^[^,\n]+$",
                     description="appended to each flip's caption")


class DatasetImageOut(Out):
    name: str
    image_url: str
    caption: str | None = Field(description="null: no caption file")
    flip: bool
    width: int | None
    height: int | None


class FindingOut(Out):
    check: str
    level: str
    message: str
    file: str | None


class DatasetOut(Out):
    folder: str
    trigger_word: str
    source_images: int
    flips: int
    ok: bool = Field(description="no error finding (what `sidecar dataset check` exits 0 on)")
    images: list[DatasetImageOut]
    findings: list[FindingOut]
    passed: dict[str, str]


class Flipped(Out):
    written: list[str]
    skipped_existing: list[str]
    uncaptioned: list[str] = Field(description="sources without a caption: their flips got none either")


def _image(folder: str, image: files.DatasetImage) -> DatasetImageOut:
    url = "/dataset/image?" + urlencode({"dir": folder, "name": image.name})
    return DatasetImageOut(name=image.name, image_url=url,
                           caption=image.caption, flip=image.flip, width=image.width, height=image.height)


def _dir(request: web.Request) -> str:
    raw = request.query.get("dir")
    if not raw:
        raise InvalidField("dir (the training folder's absolute path) is required.", {"field": "dir"})
    return raw


@routes.get("/dataset")
@operation("A training folder: its images with their captions and `dataset check`'s findings", {200: DatasetOut},
           query=(DIR,), errors=(DatasetInvalid,))
async def get_dataset(request: web.Request) -> web.Response:
    raw, trigger = _dir(request), request.app[SETTINGS].trigger_word
    view = await asyncio.to_thread(files.read_dataset, raw, trigger, request.app[LIKENESS])
    report = view.report
    return json_response(DatasetOut(
        folder=str(view.folder), trigger_word=trigger, source_images=report.sources if report else 0,
        flips=report.flips if report else 0, ok=not any(f.level == "error" for f in view.findings),
        images=[_image(str(view.folder), i) for i in view.images],
        findings=[FindingOut.model_validate(asdict(f)) for f in view.findings],
        passed=report.passed if report else {}))


@routes.get("/dataset/image")
@operation("One image of a training folder", {200: None}, binary="image/*",
           query=(DIR, Query("name", {"type": "string", "minLength": 1, "maxLength": 255}, "the image's file name",
                             required=True)),
           errors=(DatasetInvalid,))
async def get_image(request: web.Request) -> web.StreamResponse:
    raw, name = _dir(request), request.query.get("name", "")
    path = await asyncio.to_thread(lambda: files.image_in(files.folder_of(raw), name))
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


@routes.put("/dataset/caption")
@operation("Rewrite one image's caption file (atomically)", {200: DatasetImageOut}, request=CaptionEdit,
           errors=(DatasetInvalid,))
async def put_caption(request: web.Request) -> web.Response:
    req = await parse_body(request, CaptionEdit)
    image = await asyncio.to_thread(files.write_caption, req.dir, req.name, req.caption)
    return json_response(_image(str(files.folder_of(req.dir)), image))


@routes.post("/dataset/flip")
@operation("Mirror the images named (`dataset flip`): NAME_flip.png with the caption plus the tag",
           {200: Flipped}, request=FlipRequest, errors=(DatasetInvalid,))
async def flip(request: web.Request) -> web.Response:
    req = await parse_body(request, FlipRequest)
    done = await asyncio.to_thread(files.flip_images, req.dir, req.names, req.tag)
    return json_response(Flipped(written=done.written, skipped_existing=done.skipped_existing,
                                 uncaptioned=done.uncaptioned))
