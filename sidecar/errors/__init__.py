"""Every error the daemon and its tools report, one class per stable code, in one place: this package.

Each class carries its stable `code`, the HTTP `http_status` the daemon answers with and the
`exit_code` a command exits with (as click's exceptions carry theirs). Handlers and adapters raise;
the HTTP layer turns them into `{"error": {"code", "message", "details"}}` bodies (`http_status`),
the commands' one handler (`sidecar.cli_support.ToolGroup`) into one stderr line and `exit_code`.
Nothing else builds error JSON or picks exit codes. Import them from here (`from sidecar.errors import
JobNotFound`); the modules group them by concern: `base` (the root, the families by status, the exit
codes), `edge`, `inputs`, `state`, `services`, `storage`, `jobs`, `startup`, `client`. The tree:

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
    │   ├── DatasetNotReady           dataset_not_ready                    (the training gate's findings; `force` passes)
    │   ├── CharacterInvalid          character_invalid                    (character.toml unreadable or wrong)
    │   ├── PromptFileInvalid         prompt_file_invalid                  (a prompt file to refine, rewrite or render)
    │   ├── PageProjectMissing        page_project_missing                 (a page job, and no project to write it in)
    │   ├── ConceptInvalid            concept_invalid                      (concepts/NAME.toml or its intent unreadable)
    │   ├── TaggerInvalid             tagger_invalid                       (no usable tagger in models/taggers/)
    │   ├── NodeNotSupported          node_not_supported
    │   ├── SamplerNotSupported       sampler_not_supported
    │   ├── WorkflowInvalid           workflow_invalid
    │   ├── FamilyNotSupported        family_not_supported                 (sd15/sdxl/flux: the profile does not allow it)
    │   ├── LoraFamilyMismatch        lora_family_mismatch                 (a LoRA of another family than the checkpoint)
    │   ├── NoBackendAdmits           no_backend_admits                    (`where`: each backend's reason)
    │   ├── RemoteNotConfigured       remote_not_configured               (remote training: no API key, no host)
    │   └── StorageNotConfigured      storage_not_configured               (`sidecar sync`: no [storage] url)
    ├── MethodNotAllowed              method_not_allowed         405    2  (the answer's Allow header lists those served)
    ├── PayloadTooLarge               payload_too_large          413    2
    ├── UnsupportedMediaType          unsupported_media_type     415    2  (a body that is not application/json)
    ├── Unauthorized                  unauthorized               401    2  (token set, Authorization missing or wrong)
    ├── Forbidden                     forbidden                  403    2
    │   ├── HostNotAllowed            host_not_allowed                     (Host is not the daemon's: DNS rebinding)
    │   ├── OriginNotAllowed          origin_not_allowed                   (a page on another origin)
    │   └── ProjectPathOutside        project_path_outside                 (a project file leading out of the project)
    ├── NotFound                      not_found                  404    2
    │   ├── JobNotFound               job_not_found
    │   ├── GroupNotFound             group_not_found                      (no job was submitted with that groupId)
    │   ├── PreviewNotFound           preview_not_found                    (no live preview of that job (yet))
    │   ├── TrainingNotFound          training_not_found
    │   ├── BackendNotFound           backend_not_found                    (release: no rented backend of that name)
    │   ├── ProjectNotConfigured      project_not_configured               (the studio's pages: no --project)
    │   ├── VersionNotFound           version_not_found                    (no such page version in the log)
    │   ├── ConceptNotFound           concept_not_found                    (no concepts/NAME.toml)
    │   └── RoundNotFound             round_not_found                      (the concept has no round N)
    ├── Conflict                      conflict                   409    2
    │   ├── JobNotFinished            job_not_finished
    │   ├── InvalidState              invalid_state
    │   ├── TrainingInProgress        training_in_progress              4  (the device is busy training)
    │   ├── IdempotencyKeyReused      idempotency_key_reused            2  (the key names another submission)
    │   ├── LoraExists                lora_exists                       1  (promote never overwrites)
    │   ├── CheckpointFileMissing     checkpoint_file_missing           1  (a run's file is gone)
    │   ├── GenerationLogInvalid      generation_log_invalid            1  (torn or invalid: never rewritten)
    │   ├── PromptFileChanged         prompt_file_changed               2  (the page's prompt is no longer the one refined)
    │   ├── ReferencesMissing         references_missing                2  (likeness: character.toml names no reference image)
    │   ├── NoOfferUnderLimits        no_offer_under_limits             1  (no rentable GPU fits the limits)
    │   ├── ConceptExists             concept_exists                    2  (POST /concepts never overwrites)
    │   ├── PromptFileExists          prompt_file_exists                2  (a concept's page: the prompt file is there)
    │   └── SyncConflict              sync_conflict                     1  (`sidecar sync`: both sides changed; names the files)
    ├── WebSocketRequired             websocket_required         426    2  (a plain GET of /events)
    ├── QueueFull                     queue_full                 429    1  (retry later)
    ├── DiskFull                      disk_full                  507    1  (also a job failure: no space for its image)
    ├── ComfyUnavailable              comfyui_unavailable        503    1
    ├── EngineUnavailable             engine_unavailable         503    1
    ├── RemoteUnavailable             remote_unavailable         503    1  (vast.ai / the SSH host does not answer,
    │                                                                      refuses, or its SDK is not installed)
    ├── StorageUnavailable            storage_unavailable        503    3  (the [storage] extra is not installed, or
    │                                                                      the store does not answer)
    ├── StorageRefused                storage_refused            403    2  (the store refused: credential, bucket,
    │                                                                      permission; nothing changed)
    ├── OllamaUnavailable             ollama_unavailable         503    3  (nothing answers at ollama_url)
    ├── OllamaModelMissing            ollama_model_missing       503    2  (`ollama pull <model>` fixes it)
    ├── LikenessUnavailable           likeness_unavailable       503    2  (no likeness weights: `sidecar models fetch ccip`)
    ├── OllamaTimeout                 ollama_timeout             504    1  (no answer within ollama_timeout)
    ├── OllamaFailed                  ollama_error               502    1  (Ollama answered an error, e.g. 500)
    ├── AssistantAnswerInvalid        assistant_answer_invalid   502    1  (malformed twice: nothing written)
    ├── JobFailed                     execution_error (or its own) 500  1
    │   └── RegJobFailed              job_failed                        1  (a `dataset reg` render)
    ├── PromptLost                    prompt_lost                500    1
    ├── DatabaseUnusable              database_unusable          500    1  (found at start: `serve` prints one line)
    ├── DataDirLocked                 data_dir_locked            409    1  (`serve`: another daemon owns the data dir)
    ├── DataDirUnusable               data_dir_unusable          500    1  (found at start: a file where a folder belongs, ...)
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

from sidecar.errors.base import (  # noqa: F401
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_NO_DAEMON,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    SidecarError,
    error_class,
)
from sidecar.errors.edge import (  # noqa: F401
    HostNotAllowed,
    InvalidJson,
    MethodNotAllowed,
    OriginNotAllowed,
    PayloadTooLarge,
    ProjectPathOutside,
    Unauthorized,
    UnknownField,
    UnsupportedMediaType,
    WebSocketRequired,
)
from sidecar.errors.inputs import (  # noqa: F401
    BatchSizeNotSupported,
    CharacterInvalid,
    CheckpointNotFound,
    ConceptInvalid,
    ControlnetNotFound,
    DatasetInvalid,
    DatasetNotReady,
    FamilyNotSupported,
    InitImageInvalid,
    InvalidField,
    LoraFamilyMismatch,
    LoraNotFound,
    NoBackendAdmits,
    NodeNotSupported,
    PoseImageInvalid,
    PromptFileInvalid,
    PageProjectMissing,
    RemoteNotConfigured,
    ResolutionExceedsProfile,
    SamplerNotSupported,
    TaggerInvalid,
    UpscaleModelNotFound,
    WorkflowInvalid,
)
from sidecar.errors.state import (  # noqa: F401
    CheckpointFileMissing,
    ConceptExists,
    ConceptNotFound,
    DiskFull,
    GenerationLogInvalid,
    GroupNotFound,
    IdempotencyKeyReused,
    InvalidState,
    JobNotFinished,
    JobNotFound,
    LoraExists,
    NoOfferUnderLimits,
    PreviewNotFound,
    ProjectNotConfigured,
    PromptFileChanged,
    PromptFileExists,
    ReferencesMissing,
    RoundNotFound,
    QueueFull,
    TrainingInProgress,
    TrainingNotFound,
    BackendNotFound,
    VersionNotFound,
)
from sidecar.errors.services import (  # noqa: F401
    AssistantAnswerInvalid,
    ComfyUnavailable,
    EngineUnavailable,
    OllamaFailed,
    OllamaModelMissing,
    LikenessUnavailable,
    OllamaTimeout,
    OllamaUnavailable,
    RemoteUnavailable,
)
from sidecar.errors.storage import (  # noqa: F401
    StorageNotConfigured,
    StorageRefused,
    StorageUnavailable,
    SyncConflict,
)
from sidecar.errors.jobs import (  # noqa: F401
    JobCancelled,
    JobFailed,
    PromptLost,
    RegJobFailed,
)
from sidecar.errors.startup import (  # noqa: F401
    ConfigError,
    DataDirLocked,
    DataDirUnusable,
    DatabaseUnusable,
    LaunchctlFailed,
    LaunchdError,
    LaunchdUnavailable,
    PortInUse,
)
from sidecar.errors.client import (  # noqa: F401
    DaemonRefused,
    DaemonUnavailable,
)
