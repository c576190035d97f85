"""Input the daemon or a tool refuses: a field out of range, a model file that is not there, a dataset, prompt
file or workflow that is wrong, a job no backend admits, a remote run nobody configured."""

from __future__ import annotations

from sidecar.errors.base import BadRequest


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


class DatasetNotReady(BadRequest):
    """The training quality gate's findings (too few images, too small, captions, duplicates, likeness):
    `details.findings` lists each with its file and fix; `force` trains past them."""

    code = "dataset_not_ready"


class CharacterInvalid(BadRequest):
    """`character.toml` (trigger, locked traits) cannot be read or breaks its own rules."""

    code = "character_invalid"


class PromptFileInvalid(BadRequest):
    """A prompt file to refine (or rewrite with `--write`) is missing, not text, or has no prompt."""

    code = "prompt_file_invalid"


class PageProjectMissing(BadRequest):
    """A page job (`page` on POST /jobs) with no project to write its version into: the daemon was started
    without one (`--project`, project_root) and the page names none, or names a folder that is not one."""

    code = "page_project_missing"


class TaggerInvalid(BadRequest):
    """No usable WD14-style tagger (`models/taggers/<name>/model.onnx` + `selected_tags.csv`)."""

    code = "tagger_invalid"


class NodeNotSupported(BadRequest):
    code = "node_not_supported"


class SamplerNotSupported(BadRequest):
    code = "sampler_not_supported"


class WorkflowInvalid(BadRequest):
    code = "workflow_invalid"


class FamilyNotSupported(BadRequest):
    """The job's model family (sd15, sdxl, flux: read from its checkpoint) is not one the profile allows;
    `details.backends` names the configured backends whose profile allows it."""

    code = "family_not_supported"


class LoraFamilyMismatch(BadRequest):
    """A LoRA made for another family than the job's checkpoint; the details name both."""

    code = "lora_family_mismatch"


class NoBackendAdmits(BadRequest):
    """No backend `where` allows admits the job; `details.backends` maps each to its reason."""

    code = "no_backend_admits"


class RemoteNotConfigured(BadRequest):
    """A remote run asked for a provider the configuration cannot use (no vast.ai key, no SSH host)."""

    code = "remote_not_configured"


class ConceptInvalid(BadRequest):
    """A concept file (`concepts/NAME.toml`) or its intent document cannot be read or breaks its rules."""

    code = "concept_invalid"
