"""Every error the daemon and its tools report, one class per stable code, in one place.

Each class carries its stable `code`, the HTTP `http_status` the daemon answers with and the
`exit_code` a command exits with (as click's exceptions carry theirs). Handlers and adapters raise;
the HTTP layer turns them into `{"error": {"code", "message", "details"}}` bodies (`http_status`),
the commands' one handler (`sidecar.cli_support.ToolGroup`) into one stderr line and `exit_code`.
Nothing else builds error JSON or picks exit codes. The tree:

    SidecarError                      code                       status exit
    ├── BadRequest                    bad_request                400    2
    │   ├── InvalidJson               invalid_json
    │   ├── UnknownField              unknown_field
    │   ├── InvalidField              invalid_field
    │   ├── ResolutionExceedsProfile  resolution_exceeds_profile
    │   ├── BatchSizeNotSupported     batch_size_not_supported
    │   ├── LoraNotFound              lora_not_found
    │   ├── CheckpointNotFound        checkpoint_not_found
    │   ├── ControlnetNotFound        controlnet_not_found
    │   ├── UpscaleModelNotFound      upscale_model_not_found              (upscaleModel: not in models/upscale_models/)
    │   ├── PoseImageInvalid          pose_image_invalid
    │   ├── InitImageInvalid          init_image_invalid                   (initImagePath / initJobId; denoise without one)
    │   ├── DatasetInvalid            dataset_invalid
    │   ├── CharacterInvalid          character_invalid                    (character.toml unreadable or wrong)
    │   ├── PromptFileInvalid         prompt_file_invalid                  (a prompt file to refine or rewrite)
    │   ├── TaggerInvalid             tagger_invalid                       (no usable tagger in models/taggers/)
    │   ├── NodeNotSupported          node_not_supported
    │   ├── SamplerNotSupported       sampler_not_supported
    │   ├── WorkflowInvalid           workflow_invalid
    │   ├── NoBackendAdmits           no_backend_admits                    (`where`: each backend's reason)
    │   └── RemoteNotConfigured       remote_not_configured               (remote training: no API key, no host)
    ├── MethodNotAllowed              method_not_allowed         405    2  (the answer's Allow header lists those served)
    ├── PayloadTooLarge               payload_too_large          413    2
    ├── UnsupportedMediaType          unsupported_media_type     415    2  (a body that is not application/json)
    ├── Unauthorized                  unauthorized               401    2  (token set, Authorization missing or wrong)
    ├── Forbidden                     forbidden                  403    2
    │   ├── HostNotAllowed            host_not_allowed                     (Host is not the daemon's: DNS rebinding)
    │   └── OriginNotAllowed          origin_not_allowed                   (a page on another origin)
    ├── NotFound                      not_found                  404    2
    │   ├── JobNotFound               job_not_found
    │   ├── GroupNotFound             group_not_found                      (no job was submitted with that groupId)
    │   ├── PreviewNotFound           preview_not_found                    (no live preview of that job (yet))
    │   ├── TrainingNotFound          training_not_found
    │   ├── ProjectNotConfigured      project_not_configured               (the studio's pages: no --project)
    │   └── VersionNotFound           version_not_found                    (no such page version in the log)
    ├── Conflict                      conflict                   409    2
    │   ├── JobNotFinished            job_not_finished
    │   ├── InvalidState              invalid_state
    │   ├── TrainingInProgress        training_in_progress              4  (the device is busy training)
    │   ├── IdempotencyKeyReused      idempotency_key_reused            2  (the key names another submission)
    │   ├── LoraExists                lora_exists                       1  (promote never overwrites)
    │   ├── CheckpointFileMissing     checkpoint_file_missing           1  (a run's file is gone)
    │   ├── GenerationLogInvalid      generation_log_invalid            1  (torn or invalid: never rewritten)
    │   ├── PromptFileChanged         prompt_file_changed               2  (the page's prompt is no longer the one refined)
    │   └── NoOfferUnderLimits        no_offer_under_limits             1  (no rentable GPU fits the limits)
    ├── WebSocketRequired             websocket_required         426    2  (a plain GET of /events)
    ├── QueueFull                     queue_full                 429    1  (retry later)
    ├── DiskFull                      disk_full                  507    1  (also a job failure: no space for its image)
    ├── ComfyUnavailable              comfyui_unavailable        503    1
    ├── EngineUnavailable             engine_unavailable         503    1
    ├── RemoteUnavailable             remote_unavailable         503    1  (vast.ai / the SSH host does not answer,
    │                                                                      refuses, or its SDK is not installed)
    ├── OllamaUnavailable             ollama_unavailable         503    3  (nothing answers at ollama_url)
    ├── OllamaModelMissing            ollama_model_missing       503    2  (`ollama pull <model>` fixes it)
    ├── OllamaTimeout                 ollama_timeout             504    1  (no answer within ollama_timeout)
    ├── OllamaFailed                  ollama_error               502    1  (Ollama answered an error, e.g. 500)
    ├── AssistantAnswerInvalid        assistant_answer_invalid   502    1  (malformed twice: nothing written)
    ├── JobFailed                     execution_error (or its own) 500  1
    │   └── RegJobFailed              job_failed                        1  (a `dataset reg` render)
    ├── PromptLost                    prompt_lost                500    1
    ├── DatabaseUnusable              database_unusable          500    1  (found at start: `serve` prints one line)
    ├── DataDirLocked                 data_dir_locked            409    1  (`serve`: another daemon owns the data dir)
    ├── PortInUse                     port_in_use                409    1  (`serve`: the port cannot be bound)
    ├── ConfigError                   config_invalid             500    2  (names the key)
    ├── LaunchdError                  launchd_config_invalid     500    2
    ├── LaunchdUnavailable            launchd_unavailable        500    3  (no launchd on this system)
    ├── LaunchctlFailed               launchctl_failed           500    1
    └── client side (`sidecar.client`), never an answer of the daemon:
        ├── DaemonUnavailable         daemon_unavailable         503    3  (nothing answers at the URL)
        └── DaemonRefused             <the daemon's code>   <its status>  the exit code of that code's
                                                                          class here, else 2 (4xx) / 1
    job failures (stored on the job, never an HTTP answer of their own):
        comfyui_validation_error, execution_error, black_image, timeout, lost_on_restart,
        prompt_lost, model_load_failed (embedded: a checkpoint/LoRA/ControlNet file that does not
        load), lora_incompatible (embedded: a LoRA whose keys match nothing in the base model),
        upscale_model_unsupported (embedded: an upscale model that is not ESRGAN/RRDBNet or
        SRVGGNetCompact, or does not load), model_transfer_failed (a LoRA/checkpoint copy to a remote backend over SSH failed or did
        not check out), no_backend_admits (no configured backend admits a queued job any more),
        backend_gone (recovered after a restart, its backend stayed away backend_recovery_timeout
        and no other backend its `where` allows admits it),
        internal_error; training runs: training_failed, interrupted (daemon restarted mid-run),
        remote_cost_limit, remote_time_limit (the cost guard stopped a remote run; its last checkpoint
        was pulled first), remote_failed (the remote machine could not be rented, reached or used)

Exit codes shared by every command (the generate stage adds 5, see pipeline_stage/errors.py):
0 ok, 1 failed, 2 bad input/usage/configuration (nothing changed), 3 the daemon (or launchd) is not
there, 4 the device is busy training, 130 interrupted.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_NO_DAEMON = EXIT_UNAVAILABLE
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C


class SidecarError(Exception):
    """Base of every error we report. `code` is stable: clients and tests match on it."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        if code is not None:
            # Job failures reuse this class with their own code (see JobFailed).
            self.code = code  # type: ignore[misc]

    def cli_line(self) -> str:
        """The one line a command prints on stderr before exiting with `exit_code`."""
        return f"error: {self.message}"

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class BadRequest(SidecarError):
    http_status = 400
    code = "bad_request"
    exit_code = EXIT_INPUT


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


class UpscaleModelNotFound(BadRequest):
    code = "upscale_model_not_found"


class PoseImageInvalid(BadRequest):
    code = "pose_image_invalid"


class InitImageInvalid(BadRequest):
    code = "init_image_invalid"


class DatasetInvalid(BadRequest):
    code = "dataset_invalid"


class CharacterInvalid(BadRequest):
    """`character.toml` (trigger, locked traits) cannot be read or breaks its own rules."""

    code = "character_invalid"


class PromptFileInvalid(BadRequest):
    """A prompt file to refine (or rewrite with `--write`) is missing, not text, or has no prompt."""

    code = "prompt_file_invalid"


class TaggerInvalid(BadRequest):
    """No usable WD14-style tagger (`models/taggers/<name>/model.onnx` + `selected_tags.csv`)."""

    code = "tagger_invalid"


class NodeNotSupported(BadRequest):
    code = "node_not_supported"


class SamplerNotSupported(BadRequest):
    code = "sampler_not_supported"


class WorkflowInvalid(BadRequest):
    code = "workflow_invalid"


class NoBackendAdmits(BadRequest):
    """No backend `where` allows admits the job; `details.backends` maps each to its reason."""

    code = "no_backend_admits"


class WebSocketRequired(SidecarError):
    """A plain GET of /events: it only answers a WebSocket upgrade."""

    http_status = 426
    code = "websocket_required"
    exit_code = EXIT_INPUT


class MethodNotAllowed(SidecarError):
    """A method the path does not serve; the answer's `Allow` header lists those it does."""

    http_status = 405
    code = "method_not_allowed"
    exit_code = EXIT_INPUT


class PayloadTooLarge(SidecarError):
    http_status = 413
    code = "payload_too_large"
    exit_code = EXIT_INPUT


class UnsupportedMediaType(SidecarError):
    http_status = 415
    code = "unsupported_media_type"
    exit_code = EXIT_INPUT


class Unauthorized(SidecarError):
    http_status = 401
    code = "unauthorized"
    exit_code = EXIT_INPUT


class Forbidden(SidecarError):
    http_status = 403
    code = "forbidden"
    exit_code = EXIT_INPUT


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


class NotFound(SidecarError):
    http_status = 404
    code = "not_found"
    exit_code = EXIT_INPUT


class JobNotFound(NotFound):
    code = "job_not_found"


class GroupNotFound(NotFound):
    code = "group_not_found"
class PreviewNotFound(NotFound):
    code = "preview_not_found"


class TrainingNotFound(NotFound):
    code = "training_not_found"


class ProjectNotConfigured(NotFound):
    code = "project_not_configured"


class VersionNotFound(NotFound):
    code = "version_not_found"


class Conflict(SidecarError):
    http_status = 409
    code = "conflict"
    exit_code = EXIT_INPUT


class JobNotFinished(Conflict):
    code = "job_not_finished"


class InvalidState(Conflict):
    code = "invalid_state"


class TrainingInProgress(Conflict):
    code = "training_in_progress"
    exit_code = EXIT_BUSY


class LoraExists(Conflict):
    """Promote found another file under the LoRA's name: it is never overwritten."""

    code = "lora_exists"
    exit_code = EXIT_FAILED


class CheckpointFileMissing(Conflict):
    """A run's checkpoint (or final LoRA) file is no longer on disk."""

    code = "checkpoint_file_missing"
    exit_code = EXIT_FAILED


class GenerationLogInvalid(Conflict):
    code = "generation_log_invalid"
    exit_code = EXIT_FAILED


class PromptFileChanged(Conflict):
    """A refined prompt is written over the text it was refined from only: the file changed since."""

    code = "prompt_file_changed"


class QueueFull(SidecarError):
    """More jobs waiting than `max_queue`: the client should retry later (as Ollama's 503 at
    OLLAMA_MAX_QUEUE; 429 here, since it is the client's own flood that fills the queue)."""

    http_status = 429
    code = "queue_full"
    exit_code = EXIT_FAILED


class DiskFull(SidecarError):
    """No space left where the daemon writes (its database, a job's image). 507 Insufficient Storage
    at submit; a running job fails with this code and the next one runs."""

    http_status = 507
    code = "disk_full"
class IdempotencyKeyReused(Conflict):
    """An `Idempotency-Key` sent again with a different body: the key names another submission."""

    code = "idempotency_key_reused"


class ComfyUnavailable(SidecarError):
    http_status = 503
    code = "comfyui_unavailable"


class EngineUnavailable(SidecarError):
    http_status = 503
    code = "engine_unavailable"


class RemoteNotConfigured(BadRequest):
    """A remote run asked for a provider the configuration cannot use (no vast.ai key, no SSH host)."""

    code = "remote_not_configured"


class NoOfferUnderLimits(Conflict):
    """No rentable GPU offer fits the run's price, cost, time and hardware limits; `details` says which
    limits ruled out how many offers."""

    code = "no_offer_under_limits"
    exit_code = EXIT_FAILED


class RemoteUnavailable(SidecarError):
    """The remote provider could not be asked (network, refused key, SDK missing)."""

    http_status = 503
    code = "remote_unavailable"


class OllamaUnavailable(SidecarError):
    """Nothing answers at `ollama_url` (Ollama is not running, or another URL is configured)."""

    http_status = 503
    code = "ollama_unavailable"
    exit_code = EXIT_UNAVAILABLE


class OllamaModelMissing(SidecarError):
    """Ollama runs but has not got the model a setting names; `details.fix` is the `ollama pull` line."""

    http_status = 503
    code = "ollama_model_missing"
    exit_code = EXIT_INPUT


class OllamaTimeout(SidecarError):
    http_status = 504
    code = "ollama_timeout"


class OllamaFailed(SidecarError):
    """Ollama answered with an error of its own (a 500, an error line in a stream)."""

    http_status = 502
    code = "ollama_error"


class AssistantAnswerInvalid(SidecarError):
    """The model's answer did not match the schema asked for, twice (the first is retried once)."""

    http_status = 502
    code = "assistant_answer_invalid"


class DataDirLocked(SidecarError):
    """Another daemon holds the data dir's lock; `details` names its pid and port."""

    http_status = 409
    code = "data_dir_locked"
    exit_code = EXIT_FAILED  # a start-up refusal of `serve`


class PortInUse(SidecarError):
    http_status = 409
    code = "port_in_use"
    exit_code = EXIT_FAILED


class JobFailed(SidecarError):
    """A job ended in failure. The code says why (execution_error, black_image, timeout, ...)."""

    code = "execution_error"


class JobCancelled(Exception):
    """Raised inside a backend when the job it runs was cancelled (not an error for the user)."""


class PromptLost(SidecarError):
    """The backend lost the job (ComfyUI restarted or forgot it). The runner re-queues once."""

    code = "prompt_lost"
    http_status = 500


class DatabaseUnusable(SidecarError):
    """The data dir's SQLite file is damaged or not a database. Found at start, before anything else
    uses it; `sidecar serve` prints the message (path and what to do) and exits 1."""

    code = "database_unusable"

    def __init__(self, path: object, problem: str):
        self.path = path
        self.problem = problem
        self.message = (
            f"the database {path} {problem}. Nothing was changed. Move it aside "
            f"(mv '{path}' '{path}.broken', and any -wal/-shm file beside it) and start again: the daemon "
            "creates a new, empty one "
            "(job history is lost; images in the jobs folder stay), or restore it from a backup."
        )
        super().__init__(self.message, {"path": str(path)})


class RegJobFailed(JobFailed):
    """A `sidecar dataset reg` render failed on the daemon; images so far are kept (run again to resume)."""

    code = "job_failed"

    def __init__(self, name: str, job: dict[str, Any]):
        err = job.get("error") or {}
        self.name = name
        self.job = job
        self.job_code = err.get("code", job.get("status"))
        super().__init__(f"{name}: job {job.get('id', '?')} {job.get('status')}: "
                         f"{err.get('message', 'no reason given')} ({self.job_code}). Images so far are kept; "
                         "run the same command to resume.",
                         {"jobId": job.get("id"), "jobCode": self.job_code})


class ConfigError(SidecarError):
    """A configuration value is wrong. `key` names it; a command prints one line and exits 2."""

    code = "config_invalid"
    exit_code = EXIT_INPUT

    def __init__(self, key: str, message: str):
        super().__init__(f"config error: {key}: {message}", {"key": key})
        self.key = key
        self.message = message

    def cli_line(self) -> str:
        return f"sidecar: {self}"


class LaunchdError(SidecarError):
    """A value the launchd agents need is missing or wrong; the message says which and how to fix it."""

    code = "launchd_config_invalid"
    exit_code = EXIT_INPUT


class LaunchdUnavailable(SidecarError):
    """This system has no launchd (the message says what to do instead)."""

    code = "launchd_unavailable"
    exit_code = EXIT_UNAVAILABLE

    def cli_line(self) -> str:
        return self.message


class LaunchctlFailed(SidecarError):
    code = "launchctl_failed"
    exit_code = EXIT_FAILED


class DaemonUnavailable(SidecarError):
    """Nothing answers at the daemon's URL, or what answers is not the daemon."""

    code = "daemon_unavailable"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


class DaemonRefused(SidecarError):
    """An error body from the daemon: its `code`, `message`, `details` and HTTP status. The exit code is
    that of the code's class in this tree (a 409 `training_in_progress` exits 4), else 2 for a 4xx, 1."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message, details, code=code)
        self.status = status
        self.http_status = status  # type: ignore[misc]
        known = error_class(code)
        self.exit_code = (known.exit_code if known is not None  # type: ignore[misc]
                          else EXIT_INPUT if status < 500 else EXIT_FAILED)

    @property
    def device_busy(self) -> bool:
        return self.code == TrainingInProgress.code

    def cli_line(self) -> str:
        return f"error: the daemon refused: {self.message} ({self.code})"


def error_class(code: str) -> type[SidecarError] | None:
    """The class of this tree whose stable code is `code` (None for a code we do not declare)."""
    todo: list[type[SidecarError]] = [SidecarError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == __name__ and cls.code == code and cls is not DaemonRefused:
            return cls
        todo.extend(cls.__subclasses__())
    return None
