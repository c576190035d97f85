"""A page job's request made whole at the edge: which project it writes into, and, when the request
leaves the prompt to the page, the page's prompt file with its front matter and pipeline.toml filling
every field the request leaves out (`generate`'s own merge: request > front matter > pipeline.toml >
the daemon's defaults). The version itself is written by the runner (`sidecar.jobs.pages`).

Blocking (reads files): call `resolve_page` in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_stage.errors import StageError
from pipeline_stage.layout import Page, Project
from pipeline_stage.prompts import build_request, load_defaults, load_prompt, merge
from sidecar.api.models import JobRequest
from sidecar.errors import PageProjectMissing, PromptFileInvalid
from sidecar.jobs.pageref import PageRef


def project_of(ref: PageRef, configured: Path | None) -> Path:
    """The project a page job writes into: the one it names, else the daemon's."""
    if ref.project is None:
        if configured is None:
            raise PageProjectMissing(
                "A page job needs the pipeline project its version is written into: start the daemon with "
                "`sidecar serve --project ROOT` (setting project_root), or name it in page.project.",
                {"field": "page.project"})
        return configured
    root = Path(ref.project)
    if not root.is_absolute() or not root.is_dir():
        raise PageProjectMissing(f"page.project must be the absolute path of a project folder on this machine; "
                                 f"{ref.project!r} is not one.", {"field": "page.project", "value": ref.project})
    root = root.resolve()
    if not ((root / "prompts").is_dir() or (root / "pipeline.toml").is_file()):
        raise PageProjectMissing(f"{root} is not a pipeline project (it has neither prompts/ nor pipeline.toml).",
                                 {"field": "page.project", "value": ref.project})
    return root


def resolve_page(req: JobRequest, configured: Path | None) -> tuple[JobRequest, PageRef]:
    """The request to build (the prompt file's fields filled in) and the reference to store with the job
    (its project resolved, its prompt file named as the log records it)."""
    assert req.page is not None
    ref = req.page
    project = Project(project_of(ref, configured))
    page = Page(ref.chapter, ref.page)
    prompt_file = project.prompt_file(page)
    updates: dict[str, Any] = {"project": str(project.root)}
    if req.prompt is None and req.workflow is None:
        req = _filled(req, project, page, prompt_file)
    if "prompt_file" not in ref.model_fields_set and prompt_file.is_file():  # generate names its own (or none)
        updates["prompt_file"] = project.relative(prompt_file)
    return req, ref.model_copy(update=updates)


def _filled(req: JobRequest, project: Project, page: Page, prompt_file: Path) -> JobRequest:
    if not prompt_file.is_file():
        raise PromptFileInvalid(
            f"{page} has no prompt file ({project.relative(prompt_file)} not found): write it, or send the "
            "prompt with the job.", {"field": "page", "chapter": page.chapter, "page": page.page,
                                     "promptFile": project.relative(prompt_file)})
    try:
        prompt = load_prompt(prompt_file)
        filled = build_request(prompt.text, merge(load_defaults(project.config_file()), prompt.options), prompt_file)
    except StageError as exc:
        raise PromptFileInvalid(exc.message, {"field": "page", "promptFile": project.relative(prompt_file)}) from None
    given = req.model_dump(exclude_unset=True)
    return JobRequest.model_validate({**filled.model_dump(exclude_unset=True), **given})
