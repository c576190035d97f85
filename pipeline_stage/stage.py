"""One page, end to end: check the log, submit to the daemon and follow it, re-save the image, publish
the version (image + workflow + log entry). The CLI decides which pages and how often; this module
knows nothing about options or output formatting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.errors import JobFailedError
from pipeline_stage.genlog import GenerationLogEntry, timestamp_now
from pipeline_stage.image import finish_png
from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import Published, check_log, publish
from pipeline_stage.progress import PageProgress
from pipeline_stage.prompts import prompt_hash


@dataclass(frozen=True)
class PageTask:
    page: Page
    request: dict[str, Any]  # the POST /jobs body
    prompt_file: str | None  # as the log records it (relative to the root)
    reproduced_from: str | None = None  # the .workflow.json resubmitted, relative to the root
    template_hint: str | None = None  # for a resubmitted workflow: the template its source was filled from


@dataclass(frozen=True)
class PageResult:
    task: PageTask
    job: dict[str, Any]
    published: Published


def make_entry(project: Project, task: PageTask, job: dict[str, Any], version: int) -> dict[str, Any]:
    params = job.get("params") or {}
    raw = project.raw_dir(task.page.chapter)
    return GenerationLogEntry(
        image_file=project.relative(raw / task.page.image_name(version)),
        prompt_file=task.prompt_file,
        prompt_hash=prompt_hash(params.get("prompt") or ""),
        model=params.get("checkpoint"),
        timestamp=timestamp_now(),
        version=version,
        approved=False,
        seed=params.get("seed"),
        sampler=params.get("sampler"),
        scheduler=params.get("scheduler"),
        steps=params.get("steps"),
        cfg=params.get("cfg"),
        lora_id=params.get("loraId"),
        lora_strength=params.get("loraStrength"),
        controlnet_strength=params.get("controlnetStrength"),
        workflow_template=job.get("workflowTemplate") or task.template_hint,
        job_id=job["id"],
        engine=job.get("engine"),
        device=job.get("device"),
        duration_ms=job.get("durationMs"),
        workflow_file=project.relative(raw / task.page.workflow_name(version)),
        width=params.get("width"),
        height=params.get("height"),
        reproduced_from=task.reproduced_from,
        pose_image=project.relative(Path(params["poseImagePath"])) if params.get("poseImagePath") else None,
    ).to_json()


def job_error(job: dict[str, Any]) -> JobFailedError:
    if job["status"] == "cancelled":
        return JobFailedError(f"Job {job['id']} was cancelled on the daemon; nothing was written.",
                              {"jobId": job["id"]}, code="job_cancelled")
    err = job.get("error") or {}
    return JobFailedError(
        f"Job {job['id']} failed: {err.get('message') or 'no reason given'} ({err.get('code', 'unknown')}). "
        "Nothing was written.",
        {"jobId": job["id"], "daemonCode": err.get("code"), **(err.get("details") or {})},
        code="job_failed",
    )


async def render_page(client: DaemonClient, project: Project, task: PageTask, view: PageProgress) -> PageResult:
    # A log we could not append to must stop us before minutes of rendering, not after.
    await asyncio.to_thread(check_log, project, task.page.chapter)
    view.start(str(task.page))
    try:
        job = await client.run(task.request, view.update)
    finally:
        view.stop()
    if job["status"] != "succeeded":
        raise job_error(job)
    data = await client.image(job)
    png = await asyncio.to_thread(finish_png, data, job)
    # The commit runs in a worker thread: a Ctrl-C cancels our await, not the commit, and the
    # interpreter waits for the thread, so the version is written whole.
    published = await asyncio.to_thread(
        publish, project, task.page, png, job["workflow"], lambda version: make_entry(project, task, job, version)
    )
    return PageResult(task, job, published)


def summary_line(project: Project, result: PageResult) -> str:
    entry, job = result.published.entry, result.job
    bits = [f"seed {entry['seed']}", f"{entry['steps']} steps", f"{entry['sampler']}/{entry['scheduler']}",
            f"cfg {entry['cfg']}"]
    if entry.get("loraId"):
        bits.append(f"lora {entry['loraId']}:{entry['loraStrength']}")
    if entry.get("controlnetStrength") is not None:
        bits.append(f"controlnet {entry['controlnetStrength']}")
    if job.get("durationMs") is not None:
        bits.append(f"{job['durationMs'] / 1000:.1f} s on {job.get('engine')}/{job.get('device')}")
    if result.task.reproduced_from:
        bits.append(f"reproduces {result.task.reproduced_from}")
    return (f"{result.task.page} v{result.published.version} -> {project.relative(result.published.image)} "
            f"({', '.join(bits)})")
