"""The artist's pipeline project as the studio's Pages view shows it, and the two writes it makes there.

Read: chapters (from `prompts/ch-XX/` and `output/ch-XX/`), their pages (prompt files, log entries,
images in `raw/`), every version of a page from `output/ch-XX/generation-log.json` (plus an image in
`raw/` the log does not know), and the `POST /jobs` body `generate` would send for the page.

Write, through the pipeline stage's own code so the files are exactly what `generate` writes: approve
a version (`generate approve`'s log update, under the chapter lock, atomically), and save a finished
job as the page's next version through the daemon's one writer of versions (`sidecar.jobs.pages`).

Every path read or written is confined to the project (`inside`): a log entry's `workflowFile` naming
`/etc/...` or `../..`, a PNG in `raw/` that is a symlink to elsewhere, or a `raw/` folder that is one, is
refused (`project_path_outside`) and never read, served or written through. The project's files are the
artist's, but a copied or downloaded project is not trusted to stay inside itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline_stage.errors import LogInvalid, StageError
from pipeline_stage.genlog import GenerationLog, chapter_entries, read_log, set_approval
from pipeline_stage.layout import Page, Project, page_of
from pipeline_stage.outputs import approve_version
from pipeline_stage.prompts import build_request, load_defaults, load_prompt, merge
from sidecar.errors import GenerationLogInvalid, ProjectPathOutside, VersionNotFound
from sidecar.jobs.project_paths import inside, is_inside, writable_chapter  # noqa: F401  (the API uses inside)
from sidecar.jobs.pageref import PageRef
from sidecar.jobs.pages import Judge, publish_page_job
from sidecar.jobs.store import JobRecord

CHAPTER_DIR = re.compile(r"^ch-(\d+)$")


@dataclass
class Version:
    version: int
    image: Path
    workflow: Path | None
    approved: bool
    entry: dict[str, Any] | None  # the log entry as found (None: an image the log does not know)


@dataclass
class PageInfo:
    page: Page
    prompt_file: Path | None
    request: dict[str, Any] | None  # what `generate` would POST for it (None: no prompt file)
    request_error: str | None
    versions: list[Version] = field(default_factory=list)


@dataclass
class ChapterInfo:
    chapter: int
    pages: list[PageInfo]
    log_error: str | None  # a torn or invalid log: shown, never rewritten


def chapters(root: Path) -> list[int]:
    found = set()
    for folder in (root / "prompts", root / "output"):
        if folder.is_dir():
            found.update(int(m.group(1)) for d in folder.iterdir() if d.is_dir() and (m := CHAPTER_DIR.match(d.name)))
    return sorted(found)


def read_chapter(project: Project, chapter: int) -> ChapterInfo:
    log_error = None
    try:
        log = read_log(inside(project.root, project.log_file(chapter)))
    except LogInvalid as exc:
        log, log_error = GenerationLog(project.log_file(chapter)), exc.message
    except ProjectPathOutside as exc:
        log, log_error = GenerationLog(project.log_file(chapter)), exc.message
    pages = {p: None for p in project.list_pages(chapter)}
    by_page: dict[Page, dict[int, Version]] = {}
    raw = project.raw_dir(chapter)
    for entry, page, version in chapter_entries(log, chapter):
        workflow = entry.get("workflowFile")
        by_page.setdefault(page, {})[version] = Version(
            version, raw / page.image_name(version),
            project.root / workflow if isinstance(workflow, str) else raw / page.workflow_name(version),
            bool(entry.get("approved")), entry)
    if raw.is_dir() and is_inside(project.root, raw):
        for path in raw.glob("*.png"):
            found = page_of(path.name)
            if (found is not None and found[0].chapter == chapter and path.name == found[0].image_name(found[1])
                    and is_inside(project.root, path)):
                versions = by_page.setdefault(found[0], {})
                versions.setdefault(found[1], Version(found[1], path, raw / found[0].workflow_name(found[1]),
                                                      False, None))
    defaults_error = None
    try:
        defaults = load_defaults(project.config_file())
    except StageError as exc:
        defaults, defaults_error = None, exc.message
    out = []
    for page in sorted(set(pages) | set(by_page)):
        info = PageInfo(page, None, None, defaults_error)
        prompt_file = project.prompt_file(page)
        if prompt_file.is_file() and is_inside(project.root, prompt_file):
            info.prompt_file = prompt_file
            if defaults is not None:
                try:
                    prompt = load_prompt(prompt_file)
                    request = build_request(prompt.text, merge(defaults, prompt.options), prompt_file)
                    info.request = request.model_dump(by_alias=True, exclude_none=True, mode="json")
                except StageError as exc:
                    info.request_error = exc.message
        info.versions = sorted(by_page.get(page, {}).values(), key=lambda v: v.version)
        out.append(info)
    return ChapterInfo(chapter, out, log_error)


def read_project(root: Path) -> list[ChapterInfo]:
    project = Project(root)
    return [read_chapter(project, chapter) for chapter in chapters(root)]


def find_version(root: Path, page: Page, version: int) -> Version:
    for v in read_chapter(Project(root), page.chapter).pages:
        if v.page == page:
            for found in v.versions:
                if found.version == version:
                    return found
    raise VersionNotFound(f"{page.image_name(version)} is not in the project (no log entry and no image).",
                          {"chapter": page.chapter, "page": page.page, "version": version})


def approve_page_version(root: Path, page: Page, version: int, approved: bool = True, by: str = "api") -> None:
    """`generate approve|unapprove -c C --page P --version V`: the same log update, under the same lock,
    `by` (the client: `studio`, `api`) recorded as who changed it."""
    project = Project(root)
    writable_chapter(project, page.chapter)

    def mark(log: GenerationLog) -> dict[str, Any]:
        try:
            return set_approval(log, page, version, approved, by)
        except LookupError:
            raise VersionNotFound(f"{project.relative(log.path)} has no entry for {page.image_name(version)}.",
                                  {"chapter": page.chapter, "page": page.page, "version": version}) from None

    if not project.log_file(page.chapter).is_file():
        raise VersionNotFound(f"No generation log for chapter {page.chapter} yet: nothing to "
                              f"{'approve' if approved else 'unapprove'}.",
                              {"chapter": page.chapter, "page": page.page, "version": version})
    try:
        approve_version(project, page, version, mark)
    except LogInvalid as exc:
        raise GenerationLogInvalid(exc.message, exc.details) from None


def publish_job(root: Path, page: Page, job: JobRecord, reproduces: int | None, judge: Judge | None = None) -> int:
    """A succeeded job saved as the page's next version ("save to a page"), by the one writer of versions
    the page jobs use (`sidecar.jobs.pages`). Answers the version number."""
    project = Project(root)
    writable_chapter(project, page.chapter)
    prompt_file = project.prompt_file(page)
    reproduced_from = None
    if reproduces is not None:
        source = find_version(root, page, reproduces)
        reproduced_from = project.relative(source.workflow) if source.workflow else None
    # An img2img job logs where it started from, as `generate --more-like` does (`initImage`, `denoise`).
    init = job.params.init_image_path
    ref = PageRef(chapter=page.chapter, page=page.page, project=str(root),
                  prompt_file=project.relative(prompt_file) if prompt_file.is_file() else None,
                  reproduced_from=reproduced_from, init_image=project.relative(Path(init)) if init else None)
    assert job.output_file is not None
    done = publish_page_job(replace(job, page=ref), Path(job.output_file),
                            Path(job.upscaled_file) if job.upscaled_file else None, job.duration_ms(), judge)
    return done.version


def read_workflow(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VersionNotFound(f"The workflow {path.name} is missing or unreadable.", {"file": path.name}) from None
    if not isinstance(data, dict):
        raise VersionNotFound(f"The workflow {path.name} is not an API-format workflow object.", {"file": path.name})
    return data

