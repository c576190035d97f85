"""The pipeline project's routes, for the studio's Pages view (`sidecar serve --project ROOT`, setting
`project_root`): the chapters, pages and versions, each version's image and workflow, approving a
version (`generate approve`'s log update) and publishing a finished job as a page's next version.
Parse, call `sidecar.studio.project` in a thread (it reads and writes files), answer.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ConfigDict, Field, RootModel
from pydantic.alias_generators import to_camel

from pipeline_stage.layout import Page
from sidecar.api.errors import parse_body
from sidecar.api.keys import LIKENESS, RUNNER, SETTINGS
from sidecar.api.likeness import likeness_for_log
from sidecar.api.models import SOURCE_PATTERN
from sidecar.api.operations import Query, operation
from sidecar.api.responses import Out, json_response
from sidecar.api.thumbs import IMAGE_TYPES, SIZE_QUERY, THUMB_HEADERS, image_response
from sidecar.errors import (
    GenerationLogInvalid, InvalidField, JobNotFinished, JobNotFound, NotFound, ProjectNotConfigured, ProjectPathOutside,
    VersionNotFound,
)
from sidecar.studio import project as reader
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
PAGE = "/project/pages/{chapter}/{page}"
VERSION = PAGE + "/versions/{version}"


class ProjectVersion(Out):
    version: int
    approved: bool
    image_url: str
    workflow_url: str | None
    image_exists: bool
    width: int | None = None
    height: int | None = None
    timestamp: str | None = None
    entry: dict[str, Any] | None = Field(description="the generation-log entry as found (null: an image in raw/ "
                                                      "the log does not know)")


class ProjectPage(Out):
    chapter: int
    page: int
    name: str = Field(description="chXX_pNNN")
    prompt_file: str | None
    request: dict[str, Any] | None = Field(description="the POST /jobs body `generate` would send for this page")
    request_error: str | None
    versions: list[ProjectVersion]


class ProjectChapter(Out):
    chapter: int
    log_error: str | None = Field(description="the generation log is torn or invalid (it is never rewritten)")
    pages: list[ProjectPage]


class ProjectView(Out):
    root: str
    chapters: list[ProjectChapter]


class PublishRequest(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    job_id: str = Field(..., min_length=1, max_length=64, description="a succeeded job of this daemon")
    reproduces: int | None = Field(None, ge=1, description="the version whose workflow the job re-ran")


class Published(Out):
    version: int
    page: ProjectPage


class WorkflowDocument(RootModel[dict[str, Any]]):
    """An API-format ComfyUI workflow, as `generate` saved it beside the image."""


def project_root(request: web.Request) -> Path:
    root = request.app[SETTINGS].project_root
    if root is None:
        raise ProjectNotConfigured("No project: start the daemon with `sidecar serve --project ROOT` (or set "
                                   "project_root) to see a pipeline project's pages here.")
    return root


def _int(request: web.Request, name: str, low: int = 0) -> int:
    raw = request.match_info[name]
    # ASCII digits only: str.isdigit() and int() also take '²' and other scripts' digits (int('²') fails).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) < low:
        raise InvalidField(f"{name} must be a whole number of at least {low}, got {raw!r}.", {"field": name})
    return int(raw)


def page_of(request: web.Request) -> Page:
    return Page(_int(request, "chapter"), _int(request, "page"))


def _page_model(root: Path, info: reader.PageInfo) -> ProjectPage:
    base = f"/project/pages/{info.page.chapter}/{info.page.page}/versions"
    return ProjectPage(
        chapter=info.page.chapter, page=info.page.page, name=info.page.stem,
        prompt_file=info.prompt_file.relative_to(root).as_posix() if info.prompt_file else None,
        request=info.request, request_error=info.request_error,
        versions=[ProjectVersion(
            version=v.version, approved=v.approved, image_url=f"{base}/{v.version}/image",
            workflow_url=f"{base}/{v.version}/workflow" if v.workflow and v.workflow.is_file()
            and reader.is_inside(root, v.workflow) else None,
            image_exists=v.image.is_file() and reader.is_inside(root, v.image), width=_number(v.entry, "width"), height=_number(v.entry, "height"),
            timestamp=(v.entry or {}).get("timestamp") if isinstance((v.entry or {}).get("timestamp"), str) else None,
            entry=v.entry) for v in info.versions])


def _number(entry: dict[str, Any] | None, key: str) -> int | None:
    value = (entry or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read(root: Path) -> ProjectView:
    return ProjectView(root=str(root), chapters=[
        ProjectChapter(chapter=c.chapter, log_error=c.log_error, pages=[_page_model(root, p) for p in c.pages])
        for c in reader.read_project(root)])


def _one_page(root: Path, page: Page) -> ProjectPage:
    for info in reader.read_chapter(reader.Project(root), page.chapter).pages:
        if info.page == page:
            return _page_model(root, info)
    raise NotFound(f"Chapter {page.chapter} has no page {page.page}.", {"chapter": page.chapter, "page": page.page})


@routes.get("/project")
@operation("The pipeline project's chapters, pages and every version of each page", {200: ProjectView},
           errors=(ProjectNotConfigured,))
async def get_project(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(_read, project_root(request)))


@routes.get(VERSION + "/image")
@operation("A page version's PNG (or with ?size its thumbnail)", {200: None, 304: None}, binary=IMAGE_TYPES,
           query=(SIZE_QUERY,), response_headers=THUMB_HEADERS,
           errors=(ProjectNotConfigured, VersionNotFound, NotFound, ProjectPathOutside))
async def version_image(request: web.Request) -> web.StreamResponse:
    root, page, version = project_root(request), page_of(request), _int(request, "version", 1)
    found = await asyncio.to_thread(reader.find_version, root, page, version)
    image = await asyncio.to_thread(reader.inside, root, found.image)  # the file itself: no link out
    if not await asyncio.to_thread(image.is_file):
        raise NotFound(f"{found.image.name} is in the log but no longer on disk.", {"file": found.image.name})
    return await image_response(request, image)


@routes.get(VERSION + "/workflow")
@operation("The API-format workflow that made a page version (load it in ComfyUI, or reproduce it)",
           {200: WorkflowDocument}, errors=(ProjectNotConfigured, VersionNotFound, ProjectPathOutside))
async def version_workflow(request: web.Request) -> web.Response:
    root, page, version = project_root(request), page_of(request), _int(request, "version", 1)
    found = await asyncio.to_thread(reader.find_version, root, page, version)
    if found.workflow is None:
        raise VersionNotFound(f"{page.image_name(version)} has no workflow file.", {"version": version})
    workflow = await asyncio.to_thread(reader.inside, root, found.workflow)
    return json_response(WorkflowDocument(await asyncio.to_thread(reader.read_workflow, workflow)))


BY_QUERY = Query("by", {"type": "string", "pattern": SOURCE_PATTERN, "default": "api"},
                 "who changes it, as the log records it (the studio sends `studio`)")


@routes.post(VERSION + "/approve")
@operation("Approve a page version: the same generation-log update as `generate approve` (the page's other "
           "versions are no longer approved; the entry's approvalChanges say who and when)", {200: ProjectPage},
           query=(BY_QUERY,), errors=(ProjectNotConfigured, VersionNotFound, GenerationLogInvalid, NotFound,
                                       ProjectPathOutside))
async def approve(request: web.Request) -> web.Response:
    return await _approval(request, True)


@routes.post(VERSION + "/unapprove")
@operation("Take back a page version's approval: the same generation-log update as `generate unapprove`",
           {200: ProjectPage}, query=(BY_QUERY,),
           errors=(ProjectNotConfigured, VersionNotFound, GenerationLogInvalid, NotFound, ProjectPathOutside))
async def unapprove(request: web.Request) -> web.Response:
    return await _approval(request, False)


async def _approval(request: web.Request, approved: bool) -> web.Response:
    root, page, version = project_root(request), page_of(request), _int(request, "version", 1)
    by = request.query.get("by", "api")
    if not re.fullmatch(SOURCE_PATTERN, by):
        raise InvalidField("by must name who changes it, such as studio or api (lower-case letters, digits, - "
                           "and _).", {"field": "by", "value": by[:64]})
    await asyncio.to_thread(reader.approve_page_version, root, page, version, approved, by)
    return json_response(await asyncio.to_thread(_one_page, root, page))


@routes.post(PAGE + "/versions")
@operation("Save a succeeded job as the page's next version (image, workflow and log entry, as `generate` writes)",
           {201: Published}, request=PublishRequest,
           errors=(ProjectNotConfigured, JobNotFound, JobNotFinished, VersionNotFound, GenerationLogInvalid, NotFound,
                   ProjectPathOutside))
async def publish(request: web.Request) -> web.Response:
    root, page = project_root(request), page_of(request)
    req = await parse_body(request, PublishRequest)
    record = await request.app[RUNNER].get(req.job_id)
    if record.status != "succeeded" or not record.output_file:
        raise JobNotFinished(f"Job {record.id} is {record.status}: only a succeeded job becomes a version.",
                             {"jobId": record.id, "status": record.status})
    path = Path(record.output_file)
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"The image of job {record.id} is no longer on disk.", {"jobId": record.id})
    # The version's log entry records the likeness, as a page job's does (none without references or weights).
    version = await asyncio.to_thread(reader.publish_job, root, page, record, req.reproduces,
                                      lambda image: likeness_for_log(request.app[LIKENESS], image))
    return json_response(Published(version=version, page=await asyncio.to_thread(_one_page, root, page)), 201)
