"""One page, end to end: check the log, submit to the daemon and follow it, re-save the image, publish
the version (image + workflow + log entry). The CLI decides which pages and how often; this module
knows nothing about options or output formatting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.entry import PageTask, make_entry
from pipeline_stage.errors import JobFailedError
from pipeline_stage.genlog import GenerationLogEntry
from pipeline_stage.image import finish_png
from pipeline_stage.layout import Project
from pipeline_stage.outputs import Published, check_log, publish
from pipeline_stage.progress import PageProgress
from sidecar.api.responses import Job


@dataclass(frozen=True)
class PageResult:
    task: PageTask
    job: Job
    published: Published
    entry: GenerationLogEntry  # what `published` wrote into the log, typed


def job_error(job: Job) -> JobFailedError:
    if job.status == "cancelled":
        return JobFailedError(f"Job {job.id} was cancelled on the daemon; nothing was written.",
                              {"jobId": job.id}, code="job_cancelled")
    err = job.error
    return JobFailedError(
        f"Job {job.id} failed: {(err.message if err else '') or 'no reason given'} "
        f"({err.code if err else 'unknown'}). Nothing was written.",
        {"jobId": job.id, "daemonCode": err.code if err else None, **(err.details if err else {})},
        code="job_failed",
    )


async def render_page(client: DaemonClient, project: Project, task: PageTask, view: PageProgress) -> PageResult:
    # A log we could not append to must stop us before minutes of rendering, not after.
    await asyncio.to_thread(check_log, project, task.page.chapter)
    view.start(str(task.page))
    try:
        job = await client.run_job(task.request, view.update, view.preview)
    finally:
        view.stop()
    if job.status != "succeeded":
        raise job_error(job)
    return await save_version(client, project, task, job)


async def save_version(client: DaemonClient, project: Project, task: PageTask, job: Job) -> PageResult:
    """A succeeded job (in full) published as the page's next version: image, workflow, log entry, and
    the print when it was upscaled."""
    data = await client.job_image(job)
    png = await asyncio.to_thread(finish_png, data, job)
    printed = None
    if job.upscaled is not None:  # `--upscale`: the print copy, published with the version or not at all
        printed = await asyncio.to_thread(finish_png, await client.job_upscaled(job), job, upscaled=True)
    entries: dict[int, GenerationLogEntry] = {}

    def entry_for(version: int) -> dict[str, Any]:
        # The log file holds JSON objects (other writers' too): the typed entry is serialized there.
        entries[version] = make_entry(project, task, job, version)
        return entries[version].to_json()

    # The commit runs in a worker thread: a Ctrl-C cancels our await, not the commit, and the
    # interpreter waits for the thread, so the version is written whole.
    published = await asyncio.to_thread(publish, project, task.page, png, job.workflow, entry_for, printed)
    return PageResult(task, job, published, entries[published.version])


def summary_line(project: Project, result: PageResult) -> str:
    entry, job = result.entry, result.job
    bits = [f"seed {entry.seed}", f"{entry.steps} steps", f"{entry.sampler}/{entry.scheduler}", f"cfg {entry.cfg}"]
    if entry.lora_id:
        bits.append(f"lora {entry.lora_id}:{entry.lora_strength}")
    if entry.controlnet_strength is not None:
        bits.append(f"controlnet {entry.controlnet_strength}")
    if job.duration_ms is not None:
        bits.append(f"{job.duration_ms / 1000:.1f} s on {job.engine}/{job.device}")
    if entry.init_image:
        bits.append(f"img2img from {entry.init_image} at denoise {entry.denoise}")
    if result.task.reproduced_from:
        bits.append(f"reproduces {result.task.reproduced_from}")
    if entry.refined_from is not None:
        bits.append("refined prompt")
    if result.published.print_image is not None:
        bits.append(f"print {project.relative(result.published.print_image)} ({entry.upscale_model})")
    return (f"{result.task.page} v{result.published.version} -> {project.relative(result.published.image)} "
            f"({', '.join(bits)})")
