"""The daemon publishes page versions: when a job that names a page (`PageRef`) succeeds, its image
becomes that page's next version exactly as `generate` has always written one: the PNG with its
parameters in text chunks and the `.workflow.json` in `output/ch-XX/raw/`, a `GenerationLogEntry` in the
chapter's log (with the image's likeness when the daemon's project has a reference set), and with
`upscaleModel` the print in `output/ch-XX/print/`; one journalled commit under
the chapter lock (`pipeline_stage.outputs`), so all of it or none.

The runner calls this before it records the job as succeeded, so a job that answers `pageVersion` has
its files on disk, whether or not a client is still connected. A daemon stopped in between runs the
job again after its restart; the log's `jobId` makes the second publish answer the first version
instead of writing another. Versions are numbered under the lock, in the order jobs finish.

Blocking (files, PIL): call it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline_stage.errors import LogInvalid, StageError
from pipeline_stage.genlog import GenerationLogEntry, LoggedLora, prompt_hash, timestamp_now
from pipeline_stage.image import finish_png
from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import publish
from sidecar.errors import GenerationLogInvalid, JobFailed
from sidecar.jobs.pageref import PageRef, PageVersion
from sidecar.jobs.project_paths import writable_chapter
from sidecar.jobs.store import JobRecord
from sidecar.likeness.wire import Likeness

# The daemon's likeness judge on a job's image, for its log entry (the app wires it: `sidecar.api.likeness`);
# None when it cannot say (no reference set, no weights), which never stops a version being written.
Judge = Callable[[Path], Likeness | None]


def make_entry(project: Project, ref: PageRef, job: JobRecord, version: int, duration_ms: int | None,
               printed: bool, likeness: Likeness | None = None) -> GenerationLogEntry:
    """The log entry of `job` as version `version` of its page: the one place an entry is made."""
    params, page = job.params, Page(ref.chapter, ref.page)
    raw = project.raw_dir(page.chapter)
    return GenerationLogEntry(
        image_file=project.relative(raw / page.image_name(version)),
        prompt_file=ref.prompt_file,
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
        workflow_template=job.template or ref.workflow_template,
        job_id=job.id,
        engine=job.engine,
        device=job.device,
        duration_ms=duration_ms,
        workflow_file=project.relative(raw / page.workflow_name(version)),
        width=params.width,
        height=params.height,
        reproduced_from=ref.reproduced_from,
        draft_of=ref.draft_of,
        init_image=ref.init_image,
        denoise=params.denoise if ref.init_image else None,
        group_id=job.group_id,
        pose_image=project.relative(Path(params.pose_image_path)) if params.pose_image_path else None,
        backend=job.backend,
        refined_from=params.refined_from,
        upscale_model=params.upscale_model if printed else None,
        print_file=project.relative(project.print_dir(page.chapter) / page.image_name(version)) if printed else None,
        likeness=likeness,
        family=params.family,
        loras=[LoggedLora.model_validate(u.model_dump()) for u in params.loras] if params.loras else None,
    )


def publish_page_job(job: JobRecord, image: Path, upscaled: Path | None, duration_ms: int | None,
                     judge: Judge | None = None) -> PageVersion:
    """Write `job`'s image as the next version of its page (or answer the version it already made), its
    entry with the likeness `judge` finds (None: none, as without a reference set). Raises
    `GenerationLogInvalid` for a log that cannot be appended to (left untouched) and `JobFailed`
    (`bad_image`) for an image that is not the size asked for; nothing is written then."""
    ref = job.page
    assert ref is not None and ref.project is not None, "a page job is stored with its project"
    project, page = Project(Path(ref.project)), Page(ref.chapter, ref.page)
    writable_chapter(project, page.chapter)  # nothing written through a link out of the project
    try:
        png = finish_png(image.read_bytes(), job)
        printed = finish_png(upscaled.read_bytes(), job, upscaled=True) if upscaled is not None else None
        likeness = judge(image) if judge is not None else None
        done = publish(project, page, png, job.workflow,
                       lambda version: make_entry(project, ref, job, version, duration_ms,
                                                  printed is not None, likeness).to_json(),
                       printed, job_id=job.id)
    except LogInvalid as exc:
        raise GenerationLogInvalid(exc.message, exc.details) from None
    except StageError as exc:
        raise JobFailed(exc.message, exc.details, code=exc.code) from None
    return PageVersion(chapter=page.chapter, page=page.page, version=done.version,
                       file=project.relative(done.image))
