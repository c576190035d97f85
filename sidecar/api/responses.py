"""The bodies the daemon answers with, as pydantic models: handlers and the `/events` stream
serialize through these, and `/openapi.json` is built from the same classes, so what is documented
is what is sent.

camelCase on the wire (alias generator), snake_case inside. Fields that are always present are
required in the document even when they default (`json_schema_serialization_defaults_required`), so a
client can rely on the key being there. Request bodies live in `models.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.alias_generators import to_camel

from sidecar.jobs.pageref import PageRef, PageVersion
from sidecar.likeness.wire import Likeness
from sidecar.jobs.params import JobParams as DomainJobParams
from sidecar.jobs.retention import RetentionReport
from sidecar.jobs.store import JobRecord
from sidecar.statuses import JobStatus
from sidecar.training.wire import ErrorInfo, TrainingEvent
from sidecar.backends.wire import RentalSummary



class Out(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


def json_response(body: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The one way a handler answers JSON: through the body's model, camelCase, `null` kept."""
    return web.Response(text=body.model_dump_json(by_alias=True), status=status, headers=headers,
                        content_type="application/json")


class Progress(Out):
    step: int = 0
    total: int = 0


class JobParams(DomainJobParams):
    """The resolved parameters of a job (defaults applied, seed chosen); those a whole workflow did
    not state are null. The domain's `JobParams` with its limits, camelCase at the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class JobOutput(Out):
    file_name: str
    url: str


class ErrorBody(Out):
    """Every error answer."""

    error: ErrorInfo


class JobSummary(Out):
    """A job as lists and events show it: everything but the workflow graph."""

    id: str
    status: JobStatus
    progress: Progress
    params: JobParams
    workflow_template: str | None = Field(description="the template filled; null for a whole workflow")
    engine: str
    device: str | None = None
    prompt_id: str | None = None
    queued_behind: int | None = Field(None, description="while the job waits in ComfyUI's own queue behind "
                                      "other prompts (the artist's, in ComfyUI's UI): how many are ahead of it")
    where: str | None = Field(None, description="where the job may run: local, any, a tag or a backend name")
    backend: str | None = Field(None, description="the backend that runs (ran) it; null while queued")
    backend_reason: str | None = Field(None, description="why the router chose that backend")
    attempts: int = 0
    group_id: str | None = Field(None, description="the group of a submit with `variations` (GET /groups/{id})")
    retry_of: str | None = Field(None, description="the job this one retries (POST /jobs/{id}/retry)")
    source: str = Field("api", description="who submitted it (`studio`, `generate`, `grid`, `sweep`, `api`, ...)")
    page: PageRef | None = Field(None, description="a page job: the page (and project) it becomes a version of")
    page_version: PageVersion | None = Field(None, description="a page job once its version is written: "
                                                                 "{chapter, page, version, file}")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    output: JobOutput | None = None
    upscaled: JobOutput | None = Field(None, description="the image upscaled for print (`upscaleModel`), `scale` "
                                                         "times the output's size; null without an upscale")
    error: ErrorInfo | None = None
    likeness: Likeness | None = Field(None, description="a succeeded job's image judged against the project's "
                                      "reference set (GET /jobs/{id}, GET /groups/{id}); null without a project "
                                      "with references or without the likeness weights")

    @classmethod
    def from_record(cls, job: JobRecord) -> JobSummary:
        return cls.model_validate(_job_fields(job))


class Job(JobSummary):
    """One job in full (GET /jobs/{id}, GET /jobs?full=1): the summary and the filled API workflow."""

    workflow: dict[str, Any] = Field(description="the filled ComfyUI API-format workflow that runs")

    @classmethod
    def from_record(cls, job: JobRecord) -> Job:
        return cls.model_validate({**_job_fields(job), "workflow": job.workflow})


def _job_fields(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "progress": Progress(step=job.progress_step, total=job.progress_total),
        "params": JobParams.model_validate(job.params.model_dump()),  # the domain object, camelCase out
        "workflow_template": job.template,
        "engine": job.engine,
        "device": job.device,
        "prompt_id": job.prompt_id,
        "queued_behind": job.queued_behind,
        "where": job.where_,
        "backend": job.backend,
        "backend_reason": job.backend_reason,
        "attempts": job.attempts,
        "group_id": job.group_id,
        "retry_of": job.retry_of,
        "source": job.source or "api",
        "page": job.page,
        "page_version": job.page_version,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_ms": job.duration_ms(),
        "output": (JobOutput(file_name=Path(job.output_file).name, url=f"/jobs/{job.id}/image")
                   if job.output_file and job.status == "succeeded" else None),
        "upscaled": (JobOutput(file_name=Path(job.upscaled_file).name, url=f"/jobs/{job.id}/upscaled")
                     if job.upscaled_file and job.status == "succeeded" else None),
        "error": (ErrorInfo(code=job.error_code, message=job.error_message or "", details=job.error_details or {})
                  if job.error_code else None),
    }


class LikenessResult(Out):
    image: str | None = Field(None, description="the image scored, as asked (one of image, jobId)")
    job_id: str | None = Field(None, description="the job whose image was scored")
    likeness: Likeness


class LikenessScores(Out):
    """POST /likeness/score: one result per image and job asked, in the order asked (images first)."""

    results: list[LikenessResult]


NEXT_BEFORE = Field(None, description="the next (older) page: pass it as ?before=; null on the last page")


class JobList(Out):
    jobs: list[JobSummary] = Field(description="summaries; full jobs (with `workflow`) with ?full=1")
    next_before: str | None = NEXT_BEFORE


class JobListFull(Out):
    jobs: list[Job]
    next_before: str | None = NEXT_BEFORE


class JobListing(RootModel[JobList | JobListFull]):
    """GET /jobs: summaries, or with ?full=1 whole jobs."""


class JobGroup(Out):
    """The jobs of one `variations` submit, in the order they were queued (seed, seed+1, ...)."""

    group_id: str
    jobs: list[JobSummary]
    counts: dict[str, int] = Field(description="how many of its jobs are in each status")

    @classmethod
    def from_records(cls, group_id: str, jobs: list[JobRecord]) -> JobGroup:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        return cls(group_id=group_id, jobs=[JobSummary.from_record(j) for j in jobs], counts=counts)


class Submitted(RootModel[JobSummary | JobGroup]):
    """POST /jobs: the job's summary, or with `variations` its group."""


class QueueState(Out):
    """The generation queue: paused or not (persisted across a restart), and what waits, next first."""

    paused: bool = Field(description="true: the running job finishes and nothing new starts until resumed")
    paused_at: str | None = Field(description="when it was paused (UTC ISO 8601)")
    depth: int = Field(description="jobs waiting")
    running_job: str | None
    order: list[str] = Field(description="ids of the waiting jobs in the order they will run (first 100)")


class LoraInfo(Out):
    id: str
    file_name: str
    size_bytes: int | None = Field(None, description="null when the file is known only through an attached ComfyUI")
    trigger_word: str | None = None
    steps: int | None = None
    network_dim: int | None = None
    network_alpha: float | None = None
    base_model: str | None = None
    resolution: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class LoraList(Out):
    loras: list[LoraInfo]


class TrainingSummary(Out):
    """The run holding the device, as /health and a 409 `training_in_progress` show it."""

    id: str
    status: str | None = None
    step: int | None = None
    total: int | None = None
    eta_seconds: int | None = None


class WorkerState(Out):
    """The job worker: `running` false (and `error` set) between a crash and its restart."""

    running: bool
    restarts: int
    error: str | None


class LoadedModels(Out):
    """What the embedded engine holds in memory now (ComfyUI has no API that says: null there)."""

    checkpoint: str | None
    loras: list[str]
    controlnet: str | None
    keep_alive: str = Field(description="idle time before the models are unloaded (\"5m\"; \"never\")")
    expires_at: str | None = Field(description="when they will be unloaded if no job comes (UTC ISO 8601)")


class ProcessMemory(Out):
    rss_bytes: int | None = Field(description="the daemon's resident memory now")
    peak_rss_bytes: int | None = Field(description="its highest resident memory since it started")


class BackendState(Out):
    """One generation backend: what it is and how it is doing (without its queue: see BackendStatus)."""

    name: str
    kind: str = Field(description="embedded, comfyui attached or comfyui managed")
    state: Literal["unknown", "up", "down"] = Field(description="down: out of routing until it answers again")
    reason: str | None = Field(description="why it is down")
    local: bool = Field(description="runs on this machine's device (shares its lock with training)")
    url: str | None
    device: str | None
    profile: str
    tags: list[str]
    running: str | None = Field(description="the job it runs now")
    seconds_per_step: float | None = Field(description="measured from its recent jobs; null until it ran one")
    loaded_checkpoint: str | None = Field(description="the checkpoint of its last job (what it likely holds)")
    jobs_run: int
    ssh: str | None = Field(description="where LoRAs and checkpoints it lacks are copied (SFTP)")
    rental: RentalSummary | None = Field(None, description="a rented backend: its machine and cost so far")


class BackendStatus(BackendState):
    """One generation backend as /health lists it."""

    queue: int = Field(description="queued jobs the router plans onto it now")


class Health(Out):
    status: Literal["ok", "degraded"]
    comfyui: bool = Field(description="true only while ComfyUI answers")
    mps: bool = Field(description="true exactly when the device is MPS")
    engine: str
    engine_available: bool
    device: str | None
    dtypes: dict[str, str]
    profile: str
    queue_depth: int
    running_job: str | None
    queue: QueueState | None = Field(None, description="the queue's pause state and order (GET /queue)")
    worker: WorkerState
    training: TrainingSummary | None
    templates: list[str]
    template_error: str | None
    warnings: list[str]
    version: str
    loaded: LoadedModels | None = None
    memory: ProcessMemory
    backend: dict[str, Any] = Field(default_factory=dict, description="backend-specific details")
    backends: list[BackendStatus] = Field(default_factory=list, description="every generation backend: one "
                                          "(`local`) unless [[backends]] tables configure several")


class JobEvent(Out):
    """A job's state changed (or it progressed): the job's summary at that moment."""

    type: Literal["job.queued", "job.started", "job.progress", "job.succeeded", "job.failed", "job.cancelled"]
    job: JobSummary


class JobPreviewEvent(Out):
    """A running job's live preview: a small JPEG (at most 256 px on its longer side), base64 in `image`;
    the same bytes are at `url` (GET /jobs/{id}/preview) until a newer preview replaces them."""

    type: Literal["job.preview"]
    job_id: str
    step: int = Field(description="the sampler step the preview shows (0 when the backend did not say)")
    total: int
    seq: int = Field(description="1, 2, ... for each preview of this job")
    width: int
    height: int
    mime: Literal["image/jpeg"] = "image/jpeg"
    image: str = Field(description="the JPEG, base64")
    url: str


class BackendEvent(Out):
    """A backend of the [[backends]] tables joined routing (`backend.up`: it answers its health probe) or
    left it (`backend.down`, with `backend.reason`). GET /health then has its queue and the others."""

    type: Literal["backend.up", "backend.down"]
    backend: BackendState


class QueueEvent(Out):
    """The queue was paused or resumed (POST /queue/pause, /queue/resume; not sent when it already was):
    the queue's state at that moment, as GET /queue answers it."""

    type: Literal["queue.paused", "queue.resumed"]
    queue: QueueState


class Event(RootModel[JobEvent | JobPreviewEvent | QueueEvent | TrainingEvent | BackendEvent]):
    """One text frame of the /events WebSocket: a JobEvent, a JobPreviewEvent, a QueueEvent, a TrainingEvent or a
    BackendEvent, told apart by `type`."""


MAX_LISTED = 200  # job ids and paths named in a gc report (the counts are always whole)


class GcReport(Out):
    """What a retention pass removed (or, on a dry run, would): POST /gc and `sidecar gc --json`."""

    dry_run: bool
    keep_days: int
    cutoff: str | None = Field(description="jobs that ended before this time (UTC ISO 8601) are removed; null "
                                           "when keep_days is 0 and none was given (nothing is removed)")
    jobs: int = Field(description="finished jobs removed (or that would be)")
    files: int = Field(description="their image files in the data dir")
    bytes: int = Field(description="the size of those files")
    removed_jobs: int = Field(description="rows actually deleted (0 on a dry run)")
    job_ids: list[str] = Field(description="the jobs' ids (the first 200)")
    kept_outside_data_dir: list[str] = Field(description="image paths outside the data dir, left alone")

    @classmethod
    def from_report(cls, report: RetentionReport) -> GcReport:
        return cls(dry_run=report.dry_run, keep_days=report.keep_days, cutoff=report.cutoff,
                   jobs=len(report.job_ids), files=report.files, bytes=report.bytes,
                   removed_jobs=report.removed_jobs, job_ids=report.job_ids[:MAX_LISTED],
                   kept_outside_data_dir=report.kept_outside[:MAX_LISTED])


class OpenApiDocument(BaseModel):
    """/openapi.json itself (its inside is described by the OpenAPI 3.1 specification)."""

    model_config = ConfigDict(extra="forbid")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
    security: list[dict[str, list[str]]]
