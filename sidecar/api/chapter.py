"""A chapter without a terminal: `POST /project/chapters/{c}/render` queues a page job for every page of
the chapter that has no approved version (what `generate -c C --all` would render, less the pages
already picked), each from its prompt file, as one group: GET /groups/{id} (or each job, or /events)
shows the progress page by page, and each page's version is written by the daemon as its job
succeeds. All or nothing: a page whose prompt file is wrong refuses the lot, naming it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from pipeline_stage.errors import LogInvalid
from pipeline_stage.genlog import GenerationLog, entry_file_name, read_log
from pipeline_stage.layout import Page, Project, version_of
from sidecar.api.errors import parse_body
from sidecar.api.keys import BUILDER, DEVICE, RUNNER
from sidecar.api.models import JobRequest
from sidecar.api.operations import operation
from sidecar.api.page_request import resolve_page
from sidecar.api.project import _int, project_root
from sidecar.api.responses import JobSummary, Out, json_response
from sidecar.errors import (
    CheckpointNotFound, EngineUnavailable, GenerationLogInvalid, InvalidField, LoraNotFound, NotFound,
    ProjectNotConfigured, PromptFileInvalid, QueueFull, ResolutionExceedsProfile, TrainingInProgress,
)
from sidecar.jobs.pageref import MAX_PAGE
from sidecar.jobs.variations import new_group_id
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()


class ChapterRenderRequest(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    pages: list[int] | None = Field(None, min_length=1, max_length=500,
                                    description="only these pages (default: every page with a prompt file)")
    include_approved: bool = Field(False, description="also render the pages that already have an approved "
                                                      "version (a new version each)")
    front: bool = Field(False, description="queue the chapter's jobs at the head of the queue")


class SkippedPage(Out):
    page: int
    approved_version: int = Field(description="the page's approved version (why it was left out)")


class ChapterRender(Out):
    chapter: int
    group_id: str | None = Field(description="the group of the jobs queued (GET /groups/{id}); null when none was")
    jobs: list[JobSummary] = Field(description="one page job per page, in page order")
    skipped: list[SkippedPage] = Field(description="pages left out because they have an approved version")


def approved_versions(log: GenerationLog, pages: list[Page]) -> dict[Page, int]:
    approved: dict[Page, int] = {}
    for entry in log.entries:
        name = entry_file_name(entry)
        for page in pages:
            version = version_of(name, page) if name else None
            if version is not None and entry.get("approved") is True:
                approved[page] = version
    return approved


def plan_chapter(root: Path, chapter: int, req: ChapterRenderRequest) -> tuple[list[Page], dict[Page, int]]:
    """(the pages to render, the approved ones left out)."""
    project = Project(root)
    listed = project.list_pages(chapter)
    if req.pages is not None:
        missing = [p for p in req.pages if Page(chapter, p) not in listed]
        if missing:
            raise PromptFileInvalid(f"Chapter {chapter} has no prompt file for page(s) {', '.join(map(str, missing))} "
                                    f"(prompts/{Page(chapter, 0).chapter_dir}/).",
                                    {"field": "pages", "pages": missing})
        listed = [Page(chapter, p) for p in sorted(set(req.pages))]
    if not listed:
        raise NotFound(f"Chapter {chapter} has no page prompts (prompts/{Page(chapter, 0).chapter_dir}/*.txt).",
                       {"chapter": chapter})
    try:
        log = read_log(project.log_file(chapter))
    except LogInvalid as exc:
        raise GenerationLogInvalid(exc.message, exc.details) from None
    approved = {} if req.include_approved else approved_versions(log, listed)
    return [p for p in listed if p not in approved], approved


@routes.post("/project/chapters/{chapter}/render")
@operation("Render every page of a chapter that has no approved version, as page jobs (one group)",
           {202: ChapterRender}, request=ChapterRenderRequest,
           description="Each page is rendered from its prompt file (front matter and pipeline.toml fill the "
                       "request, as `generate` does) and written by the daemon as the page's next version when its "
                       "job succeeds; follow them with GET /groups/{groupId}, the jobs or /events. A page whose "
                       "prompt file is wrong refuses the whole chapter (nothing queued). `{}` renders them all.",
           errors=(ProjectNotConfigured, NotFound, PromptFileInvalid, GenerationLogInvalid, ResolutionExceedsProfile,
                   LoraNotFound, CheckpointNotFound, TrainingInProgress, QueueFull, EngineUnavailable))
async def render_chapter(request: web.Request) -> web.Response:
    root, chapter = project_root(request), _int(request, "chapter", 1)
    req = await parse_body(request, ChapterRenderRequest)
    if req.pages is not None and any(not 1 <= p <= MAX_PAGE for p in req.pages):
        raise InvalidField(f"pages must be page numbers from 1 to {MAX_PAGE}.", {"field": "pages"})
    pages, approved = await asyncio.to_thread(plan_chapter, root, chapter, req)
    skipped = [SkippedPage(page=p.page, approved_version=v) for p, v in sorted(approved.items())]
    if not pages:
        return json_response(ChapterRender(chapter=chapter, group_id=None, jobs=[], skipped=skipped), 202)
    runner, builder = request.app[RUNNER], request.app[BUILDER]
    if runner.pool is None:
        request.app[DEVICE].training.refuse_if_training()
    specs, refs = [], []
    for page in pages:  # every page checked and built before any is queued
        wanted = JobRequest(page={"chapter": chapter, "page": page.page}, source="studio")
        filled, ref = await asyncio.to_thread(resolve_page, wanted, root)
        specs.append(await builder.build(filled.generation()))
        refs.append(ref)
    jobs = await runner.submit_many(specs, front=req.front, group_id=new_group_id(), source="studio", page=refs)
    return json_response(ChapterRender(chapter=chapter, group_id=jobs[0].group_id,
                                       jobs=[JobSummary.from_record(j) for j in jobs], skipped=skipped), 202)
