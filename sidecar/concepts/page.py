"""From concept to page: a picked image's job becomes a page's prompt file, in one action.

The file is what `generate` reads (`pipeline_stage.prompts`): a `+++` front matter with what made the
image (seed, checkpoint, the LoRA stack, negative prompt, size, steps, cfg, sampler, scheduler), then
the job's prompt. `generate -c C --page P` then renders that page as the image was rendered; a comment
names the concept, the round and the job. An existing prompt file is never overwritten unless asked.
Blocking: call from a thread.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_stage.layout import Page, Project
from sidecar.atomic import write_text
from sidecar.concepts import toml_out
from sidecar.errors import InvalidField, PromptFileExists
from sidecar.jobs.params import JobParams
from sidecar.jobs.project_paths import inside


def front_matter(params: JobParams) -> dict[str, object]:
    loras = [{"id": u.id, "strength": u.strength} if u.strength is not None else {"id": u.id}
             for u in params.loras or []]
    return {
        "seed": params.seed, "checkpoint": params.checkpoint,
        # An empty stack is written too: the page renders without a LoRA even if pipeline.toml names one.
        "loras": loras, "negativePrompt": params.negative_prompt, "width": params.width, "height": params.height,
        "steps": params.steps, "cfg": params.cfg, "sampler": params.sampler, "scheduler": params.scheduler,
    }


def page_file_content(params: JobParams, origin: str) -> str:
    prompt = (params.prompt or "").strip()
    if not prompt:
        raise InvalidField("The job has no prompt to write as a page's prompt.", {"field": "jobId"})
    head = toml_out.document(front_matter(params), {}, origin)
    return f"+++\n{head}+++\n{prompt}\n"


def write_page_prompt(root: Path, page: Page, params: JobParams, origin: str, *, overwrite: bool = False) -> Path:
    project = Project(root)
    path = project.prompt_file(page)
    existing = path.parent
    while not existing.exists() and existing != root:  # prompts/ch-XX/ is made by the write
        existing = existing.parent
    inside(root, existing)
    if path.exists() or path.is_symlink():
        inside(root, path)
        if not overwrite:
            raise PromptFileExists(f"{project.relative(path)} already exists: nothing was written. Send overwrite: "
                                   "true to replace it (its old text is lost), or pick another page.",
                                   {"file": project.relative(path), "chapter": page.chapter, "page": page.page})
    write_text(path, page_file_content(params, origin))
    return path
