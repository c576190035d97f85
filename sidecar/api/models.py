"""Pydantic models of the generation API's bodies (the OpenAPI document is built from these).

camelCase on the wire, as in the pipeline's own types; unknown fields are refused. These are the
edge: a request becomes a typed `JobRequest` here once and nothing downstream re-checks a raw dict.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.jobs.params import GenerationRequest
from sidecar.statuses import JobStatus


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class JobRequest(GenerationRequest):
    """POST /jobs. Either the parameters (a template is chosen and slot-filled) or a whole `workflow`.
    The fields, their limits and their strict types are the domain's (`sidecar.jobs.params`); this
    adds only the camelCase names of the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Progress(Wire):
    step: int = 0
    total: int = 0


class JobParams(Wire):
    """The resolved parameters of a job (defaults applied, seed chosen)."""

    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    checkpoint: str | None = None
    lora_id: str | None = None
    lora_strength: float | None = None
    controlnet_strength: float | None = None
    denoise: float | None = None
    pose_image_path: str | None = None


class JobOutput(Wire):
    file_name: str
    url: str


class ErrorInfo(Wire):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Job(Wire):
    id: str
    status: JobStatus
    progress: Progress
    params: JobParams
    workflow_template: str | None
    workflow: dict[str, Any]
    engine: str
    device: str | None = None
    prompt_id: str | None = None
    queued_behind: int | None = Field(None, description="while the job waits in ComfyUI's own queue behind "
                                      "other prompts (the artist's, in ComfyUI's UI): how many are ahead of it")
    attempts: int = 0
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    output: JobOutput | None = None
    error: ErrorInfo | None = None


class JobList(Wire):
    jobs: list[Job]


class ErrorBody(BaseModel):
    error: ErrorInfo


class LoraInfo(Wire):
    id: str
    file_name: str
    size_bytes: int | None = Field(None, description="None when the file is known only through an attached ComfyUI")
    trigger_word: str | None = None
    steps: int | None = None
    network_dim: int | None = None
    network_alpha: float | None = None
    base_model: str | None = None
    resolution: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class LoraList(Wire):
    loras: list[LoraInfo]


class WorkerState(Wire):
    """The job worker: `running` false (and `error` set) between a crash and its restart."""

    running: bool
    restarts: int
    error: str | None


class GcRequest(Wire):
    """POST /gc. Without keepDays, the daemon's keep_days setting (0 there: nothing is removed)."""

    dry_run: bool = Field(False, description="only report what would be removed and its size")
    keep_days: int | None = Field(None, ge=0, le=36500,
                                  description="remove finished jobs that ended more than this many days ago "
                                              "(0: every finished job)")


class GcReport(Wire):
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


class LoadedModels(Wire):
    """What the embedded engine holds in memory now (ComfyUI has no API that says: null there)."""

    checkpoint: str | None
    loras: list[str]
    controlnet: str | None
    keep_alive: str = Field(description="idle time before the models are unloaded (\"5m\"; \"never\")")
    expires_at: str | None = Field(description="when they will be unloaded if no job comes (UTC ISO 8601)")


class ProcessMemory(Wire):
    rss_bytes: int | None = Field(description="the daemon's resident memory now")
    peak_rss_bytes: int | None = Field(description="its highest resident memory since it started")


class Health(Wire):
    status: Literal["ok", "degraded"]
    comfyui: bool
    mps: bool
    engine: str
    engine_available: bool
    device: str | None
    dtypes: dict[str, str]
    profile: str
    queue_depth: int
    running_job: str | None
    worker: WorkerState
    training: dict[str, Any] | None
    templates: list[str]
    template_error: str | None
    warnings: list[str]
    version: str
    loaded: LoadedModels | None = None
    memory: ProcessMemory
    backend: dict[str, Any] = Field(default_factory=dict)


class Event(Wire):
    """One message on GET /events: `type` is job.queued|job.started|job.progress|job.succeeded|
    job.failed|job.cancelled (with `job`) or training.* (with `run`)."""

    type: str
    job: Job | None = None
    run: dict[str, Any] | None = None
