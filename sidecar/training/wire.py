"""The training API's bodies as pydantic models (camelCase on the wire, unknown fields refused).

`TrainRequest` is parsed once at the HTTP edge and handed to the manager as is; `TrainingRun` and
`TrainingRunList` describe what the routes answer (and feed the OpenAPI document).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import re

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic.alias_generators import to_camel

from sidecar.remote.wire import RemoteRequest, RemoteStatus
from sidecar.whole_numbers import WholeNumbers
from sidecar.statuses import RunStatus

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # no path separators, no leading dot
# Both GPU trainers read options inside a sample prompt: kohya's prompt file is one prompt a line and splits
# each on " --" (`--n` negative, `--w`/`--h` size, `--l` CFG, `--ss` sampler...), ai-toolkit splits each prompt
# on any "--" (`--w 4096` past the run's size, `--w x` a ValueError that stops the run). A prompt (and the
# trigger word, which the presets' prompts and ai-toolkit's `[trigger]` put in them) must stay one prompt:
# no line breaks or other control characters, no "--".
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The same rule as a pattern, for the OpenAPI document (clients and the fuzzer read it): each character is
# no control character, and a "-" is followed by something other than "-" (or ends the text). Checked first
# by the validators below, in words.
PROMPT_PATTERN = r"^(?:[^\x00-\x1f\x7f-]|-[^\x00-\x1f\x7f-])*-?$"
TRIGGER_PATTERN = r"^(?:[^,/\\\x00-\x1f\x7f-]|-[^,/\\\x00-\x1f\x7f-])*-?$"


def prompt_text_problem(text: str) -> str | None:
    if _CONTROL.search(text):
        return "must be one line (no line breaks, tabs or other control characters)"
    if "--" in text:
        return ("must not hold \"--\": the trainers read \"--n\", \"--w\" and the like in a sample prompt as "
                "options (the run sets size, seed and steps itself)")
    return None


class Wire(WholeNumbers):
    # Defaults required in the serialization schema: a response always carries every key.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class TrainRequest(Wire):
    """POST /loras/train. Defaults are the artist's canonical config (kohya-sd-scripts.md §1)."""

    # Strict, as POST /jobs: "2" is not a step count, true not a seed, NaN not a learning rate.
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    dataset_dir: str = Field(..., min_length=1, max_length=4096,
                             description="absolute path: a flat folder of images + .txt captions, or kohya's "
                                         "img/ folder of <repeats>_<trigger> <class>/ subfolders")
    output_name: str = Field(..., pattern=NAME_PATTERN,
                             description="the LoRA's file name without extension (checkpoints are "
                                         "NAME-step00000200.safetensors)")
    steps: int = Field(1000, ge=1, le=100_000)
    resolution: int = Field(512, ge=64, le=4096, description="square training size in pixels, multiple of 64",
                            json_schema_extra={"multipleOf": 64})
    network_dim: int = Field(32, ge=1, le=256)
    network_alpha: float = Field(16.0, gt=0, le=256)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    save_every_n_steps: int = Field(200, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="random when absent (and recorded)")
    engine: Literal["kohya", "embedded", "ai-toolkit"] | None = Field(
        None, description="an alias of `trainer` (kept for older clients); default: kohya when a kohya_ss dir is "
                          "configured, else embedded")
    trigger_word: str | None = Field(None, min_length=1, max_length=100, pattern=TRIGGER_PATTERN,
                                     description="first tag of every caption [default: the configured trigger_word]")
    checkpoint: str | None = Field(None, max_length=200, pattern=r"^[^/\\]+$",
                                   description="base model file name [default: the configured checkpoint]")
    remote: RemoteRequest | None = Field(
        None, description="train on a rented GPU ({\"provider\": \"vast\", \"maxPricePerHour\": 0.6, "
                          "\"maxTotalCost\": 3, \"maxHours\": 2, \"minGpuMemoryGb\": 16, ...}) or an SSH host "
                          "({\"provider\": \"ssh\", \"host\": \"user@host\", ...}); keys left out come from the "
                          "configuration's [remote.vast] / [remote.ssh] table. kohya's train_network.py runs there")
    # Strict: true, "1" and 1.5 are not a batch size (invalid_field; 1.0 is JSON's 1, see WholeNumbers); an int
    # other than 1 is refused by the profile.
    batch_size: StrictInt | None = Field(
        None, validation_alias=AliasChoices("batchSize", "batch_size"),
        description="accepted only as 1 (the profile's training batch limit)",
        json_schema_extra={"minimum": 1, "maximum": 1},
    )
    # -- which trainer and model family (issue 28; names pinned in design.md "Round 3 contracts")
    trainer: Literal["kohya", "ai-toolkit", "embedded"] | None = Field(
        None, description="which trainer runs it [default: `engine`, else kohya when kohya_dir is configured "
                          "or the run is remote, else embedded]")
    family: Literal["sd15", "sdxl", "flux"] | None = Field(
        None, description="the base model's family [default: read from the base model's file; sd15 when it "
                          "cannot be read]; sdxl and flux train only on a GPU (remote, or a CUDA profile)")
    base_model: str | None = Field(
        None, min_length=1, max_length=4096,
        description="a hub id or a path on the training machine (ai-toolkit, kohya's SDXL and Flux); kohya's "
                    "SD files a path [default: the `checkpoint` found here, uploaded to a remote machine]")
    sample_prompts: list[Annotated[str, Field(min_length=1, max_length=1000, pattern=PROMPT_PATTERN)]] = Field(
        default_factory=list, max_length=16,
        description="prompts the trainer renders with its own sampler while it trains [default: none]")
    sample_every: int | None = Field(None, ge=1, le=100_000,
                                     description="steps between samples [default: every save]")

    # "before": the rule in words, ahead of the pattern's "should match pattern" (the type checks stay the
    # fields' own: anything not a list of strings passes through to them).
    @field_validator("sample_prompts", mode="before")
    @classmethod
    def _one_prompt_each(cls, prompts: Any) -> Any:
        for i, prompt in enumerate(prompts if isinstance(prompts, list) else []):
            why = prompt_text_problem(prompt) if isinstance(prompt, str) else None
            if why is not None:
                raise ValueError(f"sample prompt {i + 1} {why}")
        return prompts

    @field_validator("trigger_word", mode="before")
    @classmethod
    def _trigger_one_prompt(cls, trigger: Any) -> Any:
        why = prompt_text_problem(trigger) if isinstance(trigger, str) else None
        if why is not None:
            raise ValueError(f"the trigger word {why}")
        return trigger
    tracking: Literal["tensorboard", "wandb"] | None = Field(
        None, description="experiment tracking through the trainer's own switch [default: none]")
    # Presets and the quality gate (docs/training/presets.md, docs/training/gate.md). A preset fills the
    # fields below and steps, networkDim, networkAlpha, learningRate that the request leaves out
    # (`sidecar.training.presets.apply`); the run's params show what was resolved.
    preset: Literal["character", "style", "concept"] | None = Field(
        None, description="fill the training values for a character, a style or a concept (per family and "
                          "trainer: docs/training/presets.md); every field the request gives wins")
    force: bool = Field(False, description="train even when the dataset quality gate finds problems (recorded "
                                           "in the run's params)")
    repeats: int | None = Field(None, ge=1, le=1000, description="passes over each image per epoch, for a flat "
                                "folder (kohya's <repeats>_ folders keep their own) [default: 10]")
    caption_dropout_rate: float | None = Field(None, ge=0, le=1, description="share of steps that train on an "
                                               "empty caption (kohya --caption_dropout_rate, ai-toolkit "
                                               "caption_dropout_rate) [default: the trainer's, 0]")
    train_text_encoder: bool | None = Field(None, description="train the text encoder too (false: the U-Net "
                                            "only) [default: the trainer's]")
    text_encoder_lr: float | None = Field(None, gt=0, le=1, description="the text encoder's learning rate "
                                          "[default: learningRate]")


# The one LoRA folder field of promote, stage and unstage.
LorasDir = Annotated[str | None, Field(min_length=1, max_length=4096,
                                       description="the LoRA folder [default: ComfyUI's models/loras when "
                                                   "comfyui_dir is configured, else <models_dir>/loras]")]


class PromoteRequest(Wire):
    """POST /loras/{id}/promote: install one checkpoint of a run as a LoRA generation can use."""

    step: int | None = Field(None, ge=1, description="the checkpoint's step [default: the run's final LoRA]")
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="file name in the LoRA folder, without .safetensors [default: the "
                                         "run's output name]")
    loras_dir: LorasDir = None


class Promoted(Wire):
    path: str
    lora_id: str = Field(..., description="the loraId a job names to use it")
    step: int
    already_installed: bool = Field(..., description="the same file was already installed under that name")


class StageRequest(Wire):
    """POST /loras/{id}/stage: make one checkpoint of a run loadable by jobs for a while (a sweep)."""

    step: int | None = Field(None, ge=1, description="the checkpoint's step [default: the run's final LoRA]")
    loras_dir: LorasDir = None


class StagedLora(Wire):
    path: str
    lora_id: str = Field(..., description="the loraId a job names to render with this checkpoint")
    step: int
    already_staged: bool = Field(..., description="this checkpoint was already staged under that name")


class UnstageRequest(Wire):
    """POST /loras/{id}/unstage: remove what stage linked into the LoRA folder."""

    step: int | None = Field(None, ge=1, description="only this checkpoint's staging [default: every one of "
                                                     "the run]")
    loras_dir: LorasDir = None


class UnstagedLoras(Wire):
    removed: list[str] = Field(..., description="the loraIds no longer staged")


class PublishRequest(Wire):
    """POST /loras/{id}/publish: write the LoRA's bundle (`sidecar loras publish`)."""

    model_config = ConfigDict(strict=True)  # "2" is not a step, "yes" not a yes

    step: int | None = Field(None, ge=1, description="the checkpoint to publish [default: the sweep's pick when the "
                                                     "run was swept and ranked, else the final LoRA]")
    with_dataset: bool = Field(False, description="put the training images and captions in the bundle too (the "
                                                  "manifest of their hashes and captions is always there)")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="the bundle's and the file's name [default: "
                                                                     "the run's output name]")
    root: str | None = Field(None, min_length=1, max_length=4096, pattern=r"^/[^\x00]*$",
                             description="absolute folder the bundle goes under, as root/dist/<name>/ and "
                                         "root/dist/<name>.zip [default: the daemon's project_root]")


class PublishedBundle(Wire):
    run_id: str
    step: int
    folder: str = Field(description="dist/<name>/")
    zip: str = Field(description="dist/<name>.zip: the folder's files under <name>/, byte-reproducible")
    files: list[str] = Field(description="the folder's files, sorted")
    recommended_strength: float
    with_dataset: bool


class LossInfo(Wire):
    last: float | None = None
    smoothed: float | None = None


class CheckpointInfo(Wire):
    step: int
    file_name: str
    path: str
    final: bool = False
    samples: list[str] = Field(default_factory=list,
                               description="file names of the images the trainer sampled at this step, served "
                                           "by GET /loras/{id}/samples/{file}")


class ErrorInfo(Wire):
    """The error of a failed job or run, and the inside of every error answer."""

    code: str = Field(description="stable: clients match on it")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class TrainingParams(Wire):
    """The run's resolved settings (defaults applied, seed chosen)."""

    steps: int
    resolution: int
    network_dim: int
    network_alpha: float
    learning_rate: float
    save_every_n_steps: int
    seed: int | None
    checkpoint: str | None
    trainer: str | None = None
    family: str | None = None
    base_model: str | None = None
    sample_prompts: list[str] = Field(default_factory=list)
    sample_every: int | None = None
    tracking: str | None = None
    preset: str | None = None
    force: bool = Field(False, description="true: trained past the dataset quality gate's findings")
    repeats: int | None = None
    caption_dropout_rate: float | None = None
    train_text_encoder: bool | None = None
    text_encoder_lr: float | None = None


class TrainingRun(Wire):
    id: str
    status: RunStatus
    engine: str
    device: str | None = Field(None, description="what the trainer computes on (mps, cuda:0, cpu), once it "
                                                    "has started; cpu adds a warning")
    output_name: str
    trigger_word: str
    dataset_dir: str
    step: int
    total: int
    loss: LossInfo
    eta_seconds: int | None = Field(None, description="whole seconds; null until ~20 steps were measured")
    seconds_per_step: float | None = None
    checkpoints: list[CheckpointInfo]
    final_file: str | None = None
    output_dir: str
    params: TrainingParams
    warnings: list[str]
    log_tail: list[str]
    error: ErrorInfo | None = None
    attempts: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    remote: RemoteStatus | None = Field(None, description="where a remote run trains and what it has cost so far")


class TrainingRunList(Wire):
    runs: list[TrainingRun]


class LossPointInfo(Wire):
    step: int
    loss: float | None = Field(..., description="null: not finite (a diverged run)")
    smoothed: float | None = Field(..., description="an exponential moving average, bias-corrected")


class LossHistory(Wire):
    """GET /loras/{id}/loss: the run's whole loss curve (its status carries only the latest loss)."""

    run_id: str
    steps_logged: int = Field(..., description="how many steps have a loss; `points` may be fewer (spread evenly)")
    points: list[LossPointInfo] = Field(..., description="by step, the last step always in")


class TrainingEvent(Wire):
    """A training run's state changed, progressed or saved a checkpoint (a frame of /events)."""

    type: Literal["training.queued", "training.started", "training.progress", "training.checkpoint",
                  "training.succeeded", "training.failed", "training.cancelled", "training.interrupted"]
    run: TrainingRun
