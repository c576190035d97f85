"""Every error the daemon reports, with its stable code and HTTP status, in one place.

Handlers and adapters raise `SidecarError` subclasses; the HTTP layer turns them into
`{"error": {"code", "message", "details"}}` bodies using `http_status` alone. Nothing else
builds error JSON. The tree:

    SidecarError                      code               status
    ├── InvalidJson                   invalid_json       400
    ├── UnknownField                  unknown_field      400
    ├── InvalidField                  invalid_field      400
    ├── ResolutionExceedsProfile      resolution_exceeds_profile 400
    ├── BatchSizeNotSupported         batch_size_not_supported   400
    ├── LoraNotFound                  lora_not_found     400
    ├── CheckpointNotFound            checkpoint_not_found 400
    ├── ControlnetNotFound            controlnet_not_found 400
    ├── PoseImageInvalid              pose_image_invalid 400
    ├── DatasetInvalid                dataset_invalid    400
    ├── NodeNotSupported              node_not_supported 400
    ├── SamplerNotSupported           sampler_not_supported 400
    ├── WorkflowInvalid               workflow_invalid   400
    ├── PayloadTooLarge               payload_too_large  413
    ├── UnsupportedMediaType          unsupported_media_type 415  (a body that is not application/json)
    ├── Unauthorized                  unauthorized       401  (token set, Authorization missing or wrong)
    ├── Forbidden                     forbidden          403
    │   ├── HostNotAllowed            host_not_allowed   403  (Host is not the daemon's: DNS rebinding)
    │   └── OriginNotAllowed          origin_not_allowed 403  (a page on another origin)
    ├── JobNotFound                   job_not_found      404
    ├── TrainingNotFound              training_not_found 404
    ├── NotFound                      not_found          404
    ├── JobNotFinished                job_not_finished   409
    ├── InvalidState                  invalid_state      409
    ├── TrainingInProgress            training_in_progress 409
    ├── QueueFull                     queue_full         429
    ├── DiskFull                      disk_full          507 (also a job failure: no space for its image)
    ├── ComfyUnavailable              comfyui_unavailable 503
    ├── EngineUnavailable             engine_unavailable 503
    └── job failures (stored on the job, never an HTTP answer of their own):
        comfyui_validation_error, execution_error, black_image, timeout, lost_on_restart,
        prompt_lost, model_load_failed (embedded: a checkpoint/LoRA/ControlNet file that does not
        load), lora_incompatible (embedded: a LoRA whose keys match nothing in the base model),
        internal_error; training runs: training_failed, interrupted (daemon restarted mid-run)

    DatabaseUnusable (not an HTTP answer: `sidecar serve` prints it as one line and exits 1)
    Start-up refusals of `sidecar serve` (exit 1, never an HTTP answer):
    DataDirLocked    data_dir_locked  another daemon owns the data dir (details: its pid and port)
    PortInUse        port_in_use      the port cannot be bound (checked before any recovery)
"""

from __future__ import annotations

from typing import Any, ClassVar


class SidecarError(Exception):
    """Base of every error we report. `code` is stable: clients and tests match on it."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        if code is not None:
            # Job failures reuse this class with their own code (see JobFailed).
            self.code = code  # type: ignore[misc]

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class BadRequest(SidecarError):
    http_status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    code = "invalid_json"


class UnknownField(BadRequest):
    code = "unknown_field"


class InvalidField(BadRequest):
    code = "invalid_field"


class ResolutionExceedsProfile(BadRequest):
    code = "resolution_exceeds_profile"


class BatchSizeNotSupported(BadRequest):
    code = "batch_size_not_supported"


class LoraNotFound(BadRequest):
    code = "lora_not_found"


class CheckpointNotFound(BadRequest):
    code = "checkpoint_not_found"


class ControlnetNotFound(BadRequest):
    code = "controlnet_not_found"


class PoseImageInvalid(BadRequest):
    code = "pose_image_invalid"


class DatasetInvalid(BadRequest):
    code = "dataset_invalid"


class NodeNotSupported(BadRequest):
    code = "node_not_supported"


class SamplerNotSupported(BadRequest):
    code = "sampler_not_supported"


class WorkflowInvalid(BadRequest):
    code = "workflow_invalid"


class PayloadTooLarge(SidecarError):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(SidecarError):
    http_status = 415
    code = "unsupported_media_type"


class Unauthorized(SidecarError):
    http_status = 401
    code = "unauthorized"


class Forbidden(SidecarError):
    http_status = 403
    code = "forbidden"


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


class NotFound(SidecarError):
    http_status = 404
    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class TrainingNotFound(NotFound):
    code = "training_not_found"


class Conflict(SidecarError):
    http_status = 409
    code = "conflict"


class JobNotFinished(Conflict):
    code = "job_not_finished"


class InvalidState(Conflict):
    code = "invalid_state"


class TrainingInProgress(Conflict):
    code = "training_in_progress"


class QueueFull(SidecarError):
    """More jobs waiting than `max_queue`: the client should retry later (as Ollama's 503 at
    OLLAMA_MAX_QUEUE; 429 here, since it is the client's own flood that fills the queue)."""

    http_status = 429
    code = "queue_full"


class DiskFull(SidecarError):
    """No space left where the daemon writes (its database, a job's image). 507 Insufficient Storage
    at submit; a running job fails with this code and the next one runs."""

    http_status = 507
    code = "disk_full"


class ComfyUnavailable(SidecarError):
    http_status = 503
    code = "comfyui_unavailable"


class EngineUnavailable(SidecarError):
    http_status = 503
    code = "engine_unavailable"


class DataDirLocked(SidecarError):
    """Another daemon holds the data dir's lock; `details` names its pid and port."""

    http_status = 409
    code = "data_dir_locked"


class PortInUse(SidecarError):
    http_status = 409
    code = "port_in_use"


class JobFailed(SidecarError):
    """A job ended in failure. The code says why (execution_error, black_image, timeout, ...)."""

    code = "execution_error"


class JobCancelled(Exception):
    """Raised inside a backend when the job it runs was cancelled (not an error for the user)."""


class PromptLost(SidecarError):
    """The backend lost the job (ComfyUI restarted or forgot it). The runner re-queues once."""

    code = "prompt_lost"
    http_status = 500


class DatabaseUnusable(Exception):
    """The data dir's SQLite file is damaged or not a database. Found at start, before anything else
    uses it; `sidecar serve` prints the message (path and what to do) and exits 1."""

    def __init__(self, path: object, problem: str):
        self.path = path
        self.problem = problem
        self.message = (
            f"the database {path} {problem}. Nothing was changed. Move it aside "
            f"(mv '{path}' '{path}.broken', and any -wal/-shm file beside it) and start again: the daemon "
            "creates a new, empty one "
            "(job history is lost; images in the jobs folder stay), or restore it from a backup."
        )
        super().__init__(self.message)


class ConfigError(Exception):
    """A configuration value is wrong. `key` names it; the CLI prints one line and exits 2."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config error: {key}: {message}")
        self.key = key
        self.message = message
