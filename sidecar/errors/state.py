"""What is not there, or not in a state to do that now: unknown ids, a busy device, a full queue or disk, files
promote or the generation log will not overwrite, a reused idempotency key."""

from __future__ import annotations

from sidecar.errors.base import Conflict, EXIT_BUSY, EXIT_FAILED, NotFound, SidecarError


class JobNotFound(NotFound):
    code = "job_not_found"


class GroupNotFound(NotFound):
    code = "group_not_found"


class PreviewNotFound(NotFound):
    code = "preview_not_found"


class TrainingNotFound(NotFound):
    code = "training_not_found"


class BackendNotFound(NotFound):
    """No rented backend of that name now (`sidecar backends release NAME`)."""

    code = "backend_not_found"


class ProjectNotConfigured(NotFound):
    code = "project_not_configured"


class VersionNotFound(NotFound):
    code = "version_not_found"


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


class ReferencesMissing(Conflict):
    """A likeness score needs the character's reference set: `references` in the project's
    `character.toml` is missing, or its globs match no image."""

    code = "references_missing"


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


class NoOfferUnderLimits(Conflict):
    """No rentable GPU offer fits the run's price, cost, time and hardware limits; `details` says which
    limits ruled out how many offers."""

    code = "no_offer_under_limits"
    exit_code = EXIT_FAILED


class ConceptNotFound(NotFound):
    """No `concepts/NAME.toml` in the project by that name."""

    code = "concept_not_found"


class RoundNotFound(NotFound):
    """The concept has no round of that number (its intent document lists the rounds)."""

    code = "round_not_found"


class ConceptExists(Conflict):
    """POST /concepts never overwrites a concept of the same name (PUT changes one)."""

    code = "concept_exists"


class PromptFileExists(Conflict):
    """A concept made into a page never overwrites that page's prompt file unless asked (`overwrite`)."""

    code = "prompt_file_exists"
