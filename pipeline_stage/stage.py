"""One page, end to end: check the log, submit the page job to the daemon and follow it; the daemon
writes the version (image + workflow + log entry, `sidecar.jobs.pages`) before the job succeeds, and
this reads back what it wrote. The CLI decides which pages and how often; this module knows nothing
about options or output formatting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.entry import PageTask
from pipeline_stage.errors import JobFailedError
from pipeline_stage.genlog import GenerationLogEntry, read_log
from pipeline_stage.layout import Project
from pipeline_stage.outputs import Published, check_log, published_by
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
        job = await client.run_job(task.page_request(project.root), view.update, view.preview)
    finally:
        view.stop()
    if job.status != "succeeded":
        raise job_error(job)
    return await asyncio.to_thread(written_version, project, task, job)


def written_version(project: Project, task: PageTask, job: Job) -> PageResult:
    """The version the daemon wrote for a succeeded page job, as its log entry records it."""
    done = published_by(project, read_log(project.log_file(task.page.chapter)), task.page, job.id)
    if done is None or job.page_version is None:
        raise JobFailedError(f"Job {job.id} succeeded but {task.page} has no version of it in "
                             f"{project.relative(project.log_file(task.page.chapter))}: is the daemon writing into "
                             "another project?", {"jobId": job.id, "pageVersion": job.page_version and
                                                  job.page_version.model_dump(by_alias=True)}, code="job_failed")
    return PageResult(task, job, done, GenerationLogEntry.model_validate(done.entry))


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
