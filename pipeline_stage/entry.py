"""A page's task and what a finished job becomes in the generation log: the one place an entry is made,
for the pipeline stage (after rendering through the daemon) and the studio (publishing a job it ran).
Files and types only: no daemon client, no options, no output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_stage.genlog import GenerationLogEntry, timestamp_now
from pipeline_stage.layout import Page, Project
from pipeline_stage.prompts import prompt_hash
from sidecar.api.models import JobRequest
from sidecar.api.responses import Job


@dataclass(frozen=True)
class PageTask:
    page: Page
    request: JobRequest  # the POST /jobs body
    prompt_file: str | None  # as the log records it (relative to the root)
    reproduced_from: str | None = None  # the .workflow.json resubmitted, relative to the root
    template_hint: str | None = None  # for a resubmitted workflow: the template its source was filled from
    draft_of: str | None = None  # --from-draft: the draft's image, relative to the root
    init_image: str | None = None  # --more-like (or its --reproduce): the version img2img starts from
    refine: dict[str, Any] | None = None  # `--refine`: the daemon's refinement answer (POST /prompt/refine)


def make_entry(project: Project, task: PageTask, job: Job, version: int) -> GenerationLogEntry:
    params = job.params
    raw = project.raw_dir(task.page.chapter)
    return GenerationLogEntry(
        image_file=project.relative(raw / task.page.image_name(version)),
        prompt_file=task.prompt_file,
        prompt_hash=prompt_hash(params.prompt or ""),
        model=params.checkpoint,
        timestamp=timestamp_now(),
        version=version,
        approved=False,
        seed=params.seed,
        sampler=params.sampler,
        scheduler=params.scheduler,
        steps=params.steps,
        cfg=params.cfg,
        lora_id=params.lora_id,
        lora_strength=params.lora_strength,
        controlnet_strength=params.controlnet_strength,
        workflow_template=job.workflow_template or task.template_hint,
        job_id=job.id,
        engine=job.engine,
        device=job.device,
        duration_ms=job.duration_ms,
        workflow_file=project.relative(raw / task.page.workflow_name(version)),
        width=params.width,
        height=params.height,
        reproduced_from=task.reproduced_from,
        draft_of=task.draft_of,
        init_image=task.init_image,
        denoise=params.denoise if task.init_image else None,
        group_id=job.group_id,
        pose_image=project.relative(Path(params.pose_image_path)) if params.pose_image_path else None,
        backend=job.backend,
        refined_from=params.refined_from,
        upscale_model=params.upscale_model if job.upscaled is not None else None,
        print_file=(project.relative(project.print_dir(task.page.chapter) / task.page.image_name(version))
                    if job.upscaled is not None else None),
        likeness=job.likeness,
    )
