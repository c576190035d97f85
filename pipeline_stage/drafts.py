"""Draft funnels: many cheap renders of a page, then the chosen one at full quality.

`generate -c 1 --page 3 --drafts 12 --draft-steps 8` submits the page once with `variations: 12` and
few steps (the daemon queues 12 ordinary jobs, seeds seed..seed+11, one group) and writes each draft
into `output/ch-01/drafts/ch01_p003/` (never `raw/`, whose every PNG the overlay stage takes), with a
contact sheet and `index.json` (a `DraftIndex`: each draft's number, seed, resolved parameters, file).
Numbers continue across runs, so `--from-draft K` always names one draft. When the daemon's project has a
reference set, each draft carries its `likeness` (the daemon's answer for the job) and the contact sheet
shows the drafts best first (`ranking` in the index: the numbers in the sheet's order).

`--from-draft K` renders draft K's seed and parameters at full steps as the page's next version (the
ordinary publish path), its log entry carrying `draftOf` (the draft's file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.errors import InputError
from pipeline_stage.genlog import timestamp_now
from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import write_atomic
from pipeline_stage.stage import PageTask
from sidecar.api.models import JobRequest
from sidecar.api.responses import JobParams, JobSummary, Likeness
from sidecar.jobs.params import LoraRef, Resolution
from sidecar.contact_sheet import SheetCell, draw_sheet, write_sheet
from sidecar.statuses import JOB_TERMINAL

INDEX = "index.json"
SHEET = "contact-sheet.png"
LOCK = ".drafts.lock"
SHEET_COLUMNS = 4
THUMB = 256
DEFAULT_DRAFT_STEPS = 8


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Draft(Wire):
    number: int = Field(description="what --from-draft names")
    seed: int | None
    file: str | None = Field(description="the image, relative to the drafts folder; null when it did not render")
    job_id: str
    group_id: str | None
    status: str
    error: str | None = None
    created_at: str
    params: JobParams = Field(description="the parameters the daemon rendered it with (steps = the draft steps)")
    likeness: Likeness | None = Field(None, description="the daemon's likeness judge on the draft; null without "
                                                        "a reference set or the weights")
    draft_checkpoint: str | None = Field(None, description="--draft-checkpoint: the draft was rendered with this "
                                                           "checkpoint, not the page's; --from-draft finishes it "
                                                           "with the page's own by img2img from the draft")


class DraftIndex(Wire):
    page: str
    prompt_file: str | None
    drafts: list[Draft] = Field(default_factory=list)
    ranking: list[int] = Field(default_factory=list, description="draft numbers in the contact sheet's order: by "
                                                                 "likeness, best first (unscored after, by number)")

    def find(self, number: int) -> Draft | None:
        return next((d for d in self.drafts if d.number == number), None)

    @property
    def next_number(self) -> int:
        return max((d.number for d in self.drafts), default=0) + 1


def drafts_dir(project: Project, page: Page) -> Path:
    return project.chapter_output(page.chapter) / "drafts" / page.stem


def draft_name(page: Page, number: int) -> str:
    return f"{page.stem}_d{number:02d}.png"


def read_index(folder: Path, page: Page, prompt_file: str | None = None) -> DraftIndex:
    path = folder / INDEX
    if not path.is_file():
        return DraftIndex(page=page.stem, prompt_file=prompt_file)
    try:
        return DraftIndex.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise InputError(f"The drafts index {path} is not readable ({exc.__class__.__name__}); move it aside to "
                         "start a new one.", {"file": str(path)}) from None


@contextlib.contextmanager
def drafts_lock(folder: Path) -> Iterator[None]:
    """One draft run per page at a time (numbers and the index are read, then written)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_index(folder: Path, index: DraftIndex) -> Path:
    path = folder / INDEX
    write_atomic(path, (index.model_dump_json(by_alias=True, indent=2) + "\n").encode())
    return path


def ranked(drafts: list[Draft]) -> list[Draft]:
    """Scored drafts by likeness, best first, then the unscored by number (a failed render scores none)."""
    return sorted(drafts, key=lambda d: (d.likeness is None, -(d.likeness.score if d.likeness else 0), d.number))


def _caption(d: Draft) -> str:
    score = f"  {d.likeness.score:.2f} {d.likeness.verdict}" if d.likeness else ""
    return f"#{d.number}  seed {d.seed}{score}"


def write_contact_sheet(folder: Path, index: DraftIndex) -> Path:
    """Every draft of the page, numbered with its seed (and likeness), best first, four to a row."""
    cols = min(SHEET_COLUMNS, max(1, len(index.drafts)))
    rows = max(1, math.ceil(len(index.drafts) / cols))
    cells = [SheetCell(i // cols, i % cols, folder / d.file if d.file else None, d.error or d.status,
                       caption=_caption(d))
             for i, d in enumerate(ranked(index.drafts))]
    sheet = draw_sheet(f"{index.page} drafts ({len(index.drafts)})", [""] * cols, [[] for _ in range(rows)], cells,
                       THUMB, label_w=0)
    return write_sheet(folder / SHEET, sheet)


@dataclass(frozen=True)
class DraftRun:
    folder: Path
    index: Path
    sheet: Path
    made: list[Draft]


# --from-draft of a draft made with --draft-checkpoint: how much of the draft the page's checkpoint redraws
# (its composition kept, its look the page's model's).
DRAFT_FINAL_DENOISE = 0.6


def draft_request(request: JobRequest, count: int, steps: int, checkpoint: str | None = None) -> JobRequest:
    """The page's request as `count` variations at `steps` steps (the page's seed, if any, first). With a
    draft `checkpoint` (a faster family): that checkpoint, at its family's default size (the page's size is
    the page's checkpoint's)."""
    update: dict[str, Any] = {"steps": steps, "variations": count}
    if checkpoint is not None:
        update.update(checkpoint=checkpoint, resolution=None)
    return request.model_copy(update=update)


async def render_drafts(client: DaemonClient, project: Project, task: PageTask,
                        on_draft: Callable[[Draft, int, int], None], poll_interval: float = 0.5) -> DraftRun:
    """Submit the task's request (a `draft_request`) and save each draft as it ends. Ctrl-C cancels the
    whole group on the daemon; drafts already saved stay, with their index."""
    folder = drafts_dir(project, task.page)
    body = task.request.model_copy(update={"source": "generate"})
    with drafts_lock(folder):
        index = await asyncio.to_thread(read_index, folder, task.page, task.prompt_file)
        first = index.next_number
        group = await client.submit_group(body)
        jobs = group.jobs
        numbers = {job.id: first + i for i, job in enumerate(jobs)}
        made: dict[str, Draft] = {}
        try:
            while len(made) < len(jobs):
                for job in (await client.group(group.group_id)).jobs:
                    if job.id in made or job.status not in JOB_TERMINAL:
                        continue
                    draft = await _save(client, folder, task.page, numbers[job.id], job, task.draft_checkpoint)
                    made[job.id] = draft
                    on_draft(draft, len(made), len(jobs))
                if len(made) < len(jobs):
                    await asyncio.sleep(poll_interval)
        except BaseException:
            await client.cancel_group_quietly(group.group_id)
            raise
        finally:
            ordered = [made[j.id] for j in jobs if j.id in made]
            index.drafts.extend(ordered)
            index.ranking = [d.number for d in ranked(index.drafts)]
            index_path = await asyncio.to_thread(write_index, folder, index)
            sheet = await asyncio.to_thread(write_contact_sheet, folder, index)
    return DraftRun(folder, index_path, sheet, ordered)


async def _save(client: DaemonClient, folder: Path, page: Page, number: int, job: JobSummary,
                draft_checkpoint: str | None = None) -> Draft:
    file = None
    error = None
    if job.status == "succeeded":
        file = draft_name(page, number)
        data = await client.job_image(job)
        await asyncio.to_thread(write_atomic, folder / file, data)
    else:
        error = f"{job.error.code}: {job.error.message}" if job.error else job.status
    return Draft(number=number, seed=job.params.seed, file=file, job_id=job.id, group_id=job.group_id,
                 status=job.status, error=error, created_at=timestamp_now(), params=job.params,
                 likeness=job.likeness if file else None, draft_checkpoint=draft_checkpoint)


def request_from_draft(draft: Draft, steps: int | None) -> JobRequest:
    """The request that renders draft `draft` again, at `steps` (None: the daemon's default)."""
    p = draft.params
    size = Resolution(width=p.width, height=p.height) if p.width is not None and p.height is not None else None
    # A LoRA stack is replayed whole; one LoRA keeps the one-LoRA form the draft was asked with.
    stack = [LoraRef(id=u.id, strength=u.strength) for u in p.loras] if p.loras and len(p.loras) > 1 else None
    return JobRequest(
        prompt=p.prompt, negative_prompt=p.negative_prompt, seed=p.seed, steps=steps, cfg=p.cfg,
        sampler=p.sampler, scheduler=p.scheduler, checkpoint=p.checkpoint, loras=stack,
        lora_id=p.lora_id if stack is None else None,
        lora_strength=p.lora_strength if p.lora_id and stack is None else None, pose_image_path=p.pose_image_path,
        controlnet_strength=p.controlnet_strength if p.pose_image_path else None, resolution=size,
    )


def from_draft_task(project: Project, page: Page, number: int, steps: int | None,
                    page_request: JobRequest | None = None) -> PageTask:
    """Draft `number` rendered again at full steps as the page's next version; a draft made with
    --draft-checkpoint is finished with the page's own request (`page_request`: its checkpoint, LoRAs and
    size) by img2img from the draft, at the draft's seed."""
    folder = drafts_dir(project, page)
    index = read_index(folder, page)
    draft = index.find(number)
    if draft is None:
        known = ", ".join(str(d.number) for d in index.drafts) or "none yet (render some with --drafts N)"
        raise InputError(f"{page} has no draft {number} in {project.relative(folder / INDEX)}; drafts: {known}.",
                         {"draft": number, "drafts": [d.number for d in index.drafts]})
    if draft.status != "succeeded" or draft.file is None:
        raise InputError(f"Draft {number} of {page} did not render ({draft.error or draft.status}); pick another.",
                         {"draft": number})
    image = folder / draft.file
    if draft.draft_checkpoint is not None and page_request is not None:
        request = page_request.model_copy(update={
            "seed": draft.seed, "steps": steps if steps is not None else page_request.steps,
            "init_image_path": str(image), "denoise": DRAFT_FINAL_DENOISE})
        return PageTask(page, request, index.prompt_file, draft_of=project.relative(image),
                        init_image=project.relative(image))
    return PageTask(page, request_from_draft(draft, steps), index.prompt_file, draft_of=project.relative(image))
