"""A training folder's caption table, for the studio's Dataset view: the rows of `captions.csv` with their
status, confirming (as proposed or edited) and rejecting proposals, and asking for proposals (what
`sidecar dataset caption DIR --auto` does). Parse, call `sidecar.studio.captions` (in a thread for the
files), answer. Writes to a table go one at a time (CAPTIONS_LOCK).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.keys import CAPTIONS_LOCK, SETTINGS
from sidecar.api.operations import Query, operation
from sidecar.api.responses import Out, json_response
from sidecar.dataprep.proposals import run_proposals
from sidecar.dataprep.files import DEFAULT_FLIP_TAG
from sidecar.errors import (
    AssistantAnswerInvalid, DatasetInvalid, InvalidField, InvalidState, OllamaFailed, OllamaModelMissing,
    OllamaTimeout, OllamaUnavailable, TaggerInvalid,
)
from sidecar.studio import captions as table
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
DirText = Annotated[str, Field(min_length=1, max_length=4096, description="absolute path of the training folder",
                               json_schema_extra={"pattern": "^/"})]
Name = Annotated[str, Field(min_length=1, max_length=255)]
Part = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[^,\n\r]+$")]
FlipTag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^,\n\r]+$")]


class In(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)


class ConfirmRow(In):
    file: Name = Field(description="a source image of the folder (not a flip)")
    framing: Part
    pose: Part
    background: Part


class ConfirmRequest(In):
    dir: DirText
    rows: list[ConfirmRow] = Field(min_length=1, max_length=500,
                                   description="each row as the artist accepts it (edited or as proposed)")
    flip_tag: FlipTag = Field(DEFAULT_FLIP_TAG, description="appended to the caption of each image's flip")


class RejectRequest(In):
    dir: DirText
    files: list[Name] = Field(min_length=1, max_length=500, description="images whose proposals are dropped")


class ProposeRequest(In):
    dir: DirText
    proposer: Literal["auto", "tagger", "ollama"] = Field(
        "auto", description="auto: the tagger when one is installed, else the vision model through Ollama")
    tagger: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a tagger folder's name in <models_dir>/taggers/")


class CaptionRowOut(Out):
    file: str
    framing: str
    pose: str
    background: str
    status: Literal["", "proposed", "confirmed"] = Field(
        description="proposed: a proposer's, for the artist to check; confirmed: the artist's; '': filled by hand "
                    "(or empty)")
    caption: str = Field(description="the caption the row makes: the trigger word first")
    flip: str | None = Field(description="the image's flip, whose caption follows this row (plus the flip tag)")
    image_url: str


class CaptionTableOut(Out):
    folder: str
    table: str = Field(description="the table file (captions.csv in the folder)")
    exists: bool
    trigger_word: str
    rows: list[CaptionRowOut]
    unlisted: list[str] = Field(description="source images without a row")
    proposed: int = Field(description="rows waiting for the artist: `dataset check` fails while any is left")
    proposer: str | None = Field(None, description="after proposing: what proposed (`tagger NAME`, `ollama MODEL`)")
    unfilled: dict[str, list[str]] = Field(default_factory=dict,
                                           description="after proposing: the parts no proposal could fill, per image")


class Confirmed(Out):
    written: list[str] = Field(description="the caption files written (each image's, then its flip's)")
    table: CaptionTableOut


def _out(view: table.CaptionTable) -> CaptionTableOut:
    folder = str(view.folder)
    return CaptionTableOut(
        folder=folder, table=str(view.table), exists=view.exists, trigger_word=view.trigger,
        rows=[CaptionRowOut(file=r.row.file, framing=r.row.framing, pose=r.row.pose, background=r.row.background,
                            status=r.row.status, caption=r.caption, flip=r.flip,  # type: ignore[arg-type]
                            image_url="/dataset/image?" + urlencode({"dir": folder, "name": r.row.file}))
              for r in view.rows],
        unlisted=view.unlisted, proposed=view.proposed, proposer=view.proposer, unfilled=view.unfilled)


@routes.get("/dataset/captions")
@operation("A training folder's caption table: each row with its status (proposed or confirmed) and the caption "
           "it makes", {200: CaptionTableOut}, errors=(DatasetInvalid,),
           query=(Query("dir", {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/"},
                        "absolute path of the training folder", required=True),))
async def get_captions(request: web.Request) -> web.Response:
    raw = request.query.get("dir")
    if not raw:
        raise InvalidField("dir (the training folder's absolute path) is required.", {"field": "dir"})
    trigger = request.app[SETTINGS].trigger_word
    view = await asyncio.to_thread(lambda: table.read_captions(table.folder_of(raw), trigger))
    return json_response(_out(view))


@routes.post("/dataset/captions/confirm")
@operation("Confirm caption rows (as proposed or edited): each becomes `confirmed` and its caption is written, "
           "the trigger word first, its flip's with the flip tag", {200: Confirmed}, request=ConfirmRequest,
           errors=(DatasetInvalid,),
           description="Every row is checked before anything is written: a part that is empty, holds a comma, or "
                       "is the trigger word or a flip tag is 400 naming `rows[i].<part>`.")
async def confirm(request: web.Request) -> web.Response:
    req = await parse_body(request, ConfirmRequest)
    trigger = request.app[SETTINGS].trigger_word
    items = [table.Confirmation(r.file, r.framing, r.pose, r.background) for r in req.rows]

    def run() -> tuple[list[str], table.CaptionTable]:
        folder = table.folder_of(req.dir)
        written = table.confirm(folder, items, trigger, req.flip_tag)
        return written, table.read_captions(folder, trigger)

    async with request.app[CAPTIONS_LOCK]:
        written, view = await asyncio.to_thread(run)
    return json_response(Confirmed(written=written, table=_out(view)))


@routes.post("/dataset/captions/reject")
@operation("Reject caption proposals: their rows are left empty, the caption files untouched",
           {200: CaptionTableOut}, request=RejectRequest, errors=(DatasetInvalid, InvalidState),
           description="Only a row still `proposed` can be rejected (409 invalid_state otherwise); nothing is "
                       "written unless every named row is one.")
async def reject(request: web.Request) -> web.Response:
    req = await parse_body(request, RejectRequest)
    trigger = request.app[SETTINGS].trigger_word

    def run() -> table.CaptionTable:
        folder = table.folder_of(req.dir)
        table.reject(folder, req.files)
        return table.read_captions(folder, trigger)

    async with request.app[CAPTIONS_LOCK]:
        view = await asyncio.to_thread(run)
    return json_response(_out(view))


@routes.post("/dataset/captions/propose")
@operation("Propose framing, pose and background for every row not confirmed (`dataset caption --auto`): a WD14 "
           "tagger from <models_dir>/taggers/ or the vision model through Ollama", {200: CaptionTableOut},
           request=ProposeRequest,
           errors=(DatasetInvalid, TaggerInvalid, OllamaUnavailable, OllamaModelMissing, OllamaTimeout, OllamaFailed,
                   AssistantAnswerInvalid),
           description="The table is written once, after every image: a proposer that fails (Ollama not running, "
                       "a model not pulled, no tagger) changes nothing. Confirmed rows are never proposed again.")
async def propose(request: web.Request) -> web.Response:
    req = await parse_body(request, ProposeRequest)
    settings = request.app[SETTINGS]
    folder = await asyncio.to_thread(table.folder_of, req.dir)
    path = folder / table.TABLE_NAME
    run = await run_proposals(folder, path, settings.trigger_word, DEFAULT_FLIP_TAG, req.proposer, req.tagger,
                              settings)
    async with request.app[CAPTIONS_LOCK]:
        await asyncio.to_thread(table.save_proposals, path, run)
    view = await asyncio.to_thread(table.read_captions, folder, settings.trigger_word, run)
    return json_response(_out(view))
