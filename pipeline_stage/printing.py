"""`generate -c 1 --page 3 --version 2 --upscale MODEL`: the print of a version already rendered, without
rendering it again. The daemon upscales that version's PNG (a `POST /jobs` with `upscaleModel` and
`initImagePath`, no prompt); the result goes to `output/ch-XX/print/` under the version's name and the
version's log entry gains `upscaleModel` and `printFile`, both in one journalled commit. A print is never
overwritten: a version that has one keeps it (delete the file to make another).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.errors import InputError
from pipeline_stage.genlog import GenerationLog, find_entries, read_log
from pipeline_stage.image import finish_png
from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import add_print
from pipeline_stage.progress import PageProgress
from pipeline_stage.stage import job_error
from sidecar.api.models import JobRequest

# Options that render something (or choose what to render): a print of an existing version takes none.
RENDER_OPTIONS = ("reproduce", "drafts", "draft_steps", "from_draft", "refine", "pages", "more_like", "variations")


@dataclass(frozen=True)
class Printed:
    page: Page
    version: int
    file: Path
    job_id: str
    model: str


def check_print_options(opts: dict[str, Any], param_options: tuple[str, ...]) -> None:
    """`--version N` goes with `--upscale MODEL` and one `--page`, and nothing that renders."""
    if opts["version"] is None:
        return
    if opts["upscale"] is None:
        raise InputError("--version N names a rendered version to upscale: add --upscale MODEL.")
    if opts["chapter"] is None or opts["page"] is None:
        raise InputError("--version N --upscale MODEL prints one version of one page: use it with -c N --page N.")
    given = [f"--{name.replace('_', '-')}" for name in (*param_options, *RENDER_OPTIONS)
             if opts.get(name) not in (None, False)] + (["--all"] if opts["all_pages"] else [])
    given += ["--repeat"] if opts["repeat"] != 1 else []
    if given:
        raise InputError(f"--version N --upscale MODEL upscales that version as it is; it takes no "
                         f"{', '.join(given)}.")


def _source(project: Project, page: Page, version: int) -> Path:
    image = project.raw_dir(page.chapter) / page.image_name(version)
    if not image.is_file():
        raise InputError(f"{project.relative(image)} does not exist: no version {version} of {page} to upscale.",
                         {"path": str(image)})
    printed = project.print_dir(page.chapter) / page.image_name(version)
    if printed.exists():
        raise InputError(f"{project.relative(printed)} exists already: a print is never overwritten (delete it to "
                         "make another).", {"path": str(printed)})
    return image


def _with_source_text(png: bytes, source: Path, model: str) -> bytes:
    """The print carries its version's text chunks (how the page was made) plus the upscaler."""
    with Image.open(source) as src:
        text = dict(getattr(src, "text", {}) or {})
    info = PngInfo()
    if "parameters" in text:
        info.add_text("parameters", f"{text['parameters']}, Upscaler: {model}")
    if "prompt" in text:
        info.add_text("prompt", text["prompt"])
    with Image.open(io.BytesIO(png)) as img:
        out = io.BytesIO()
        img.save(out, "PNG", pnginfo=info)
    return out.getvalue()


async def print_version(client: DaemonClient, project: Project, page: Page, version: int, model: str,
                        view: PageProgress) -> Printed:
    source = await asyncio.to_thread(_source, project, page, version)
    log = await asyncio.to_thread(read_log, project.log_file(page.chapter))
    if not find_entries(log, page, version):
        raise InputError(f"The generation log has no entry for {page.image_name(version)}: only logged versions "
                         "are printed.", {"file": str(log.path)})
    request = JobRequest.model_validate({"upscale_model": model, "init_image_path": str(source.resolve())})
    view.start(f"{page} v{version} print")
    try:
        job = await client.run_job(request, view.update, view.preview)
    finally:
        view.stop()
    if job.status != "succeeded":
        raise job_error(job)
    png = await asyncio.to_thread(finish_png, await client.job_image(job), job, upscaled=True)
    png = await asyncio.to_thread(_with_source_text, png, source, model)
    target = project.print_dir(page.chapter) / page.image_name(version)

    def mark(found: GenerationLog) -> None:
        for entry in find_entries(found, page, version):
            entry["upscaleModel"] = model
            entry["printFile"] = project.relative(target)

    await asyncio.to_thread(add_print, project, page, version, png, mark)
    return Printed(page, version, target, job.id, model)
