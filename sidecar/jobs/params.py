"""A generation job as the daemon decided it: typed, snake_case, with the one set of parameter limits.

`JobParams` is what a job renders with (defaults applied, seed chosen, or read off a whole workflow's
validated nodes); `JobSpec` adds what runs it (the template, the filled workflow, the pose image).
Both the wire model (`sidecar.api.models.JobRequest`) and whole workflows are held to the limits
declared here (`Steps`, `Cfg`, ...), so a limit changes in one place. camelCase exists only at the
wire: the API's models are built from these, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError
from pydantic.alias_generators import to_snake

from sidecar.assist.provenance import RefinedFrom
from sidecar.errors import InvalidField
from sidecar.whole_numbers import WholeNumbers

# -- the limits, one definition each (the wire model's fields use the same types)
Prompt = Annotated[str, Field(min_length=1, max_length=4000)]
NegativePrompt = Annotated[str, Field(max_length=4000)]
ModelName = Annotated[str, Field(max_length=200)]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]
Steps = Annotated[int, Field(ge=1, le=150)]
Cfg = Annotated[float, Field(ge=0, le=30, allow_inf_nan=False)]
SamplerName = Annotated[str, Field(min_length=1, max_length=64)]
LoraStrength = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
ControlnetStrength = Annotated[float, Field(ge=0.4, le=0.9, allow_inf_nan=False)]
Denoise = Annotated[float, Field(ge=0.05, le=1, allow_inf_nan=False)]
Pixels = Annotated[int, Field(ge=8, le=16384, json_schema_extra={"multipleOf": 8})]  # the builder says "multiple of 8"
# Documented as absolute (the handlers refuse a relative one with the field's own code).
PathText = Annotated[str, Field(min_length=1, max_length=4096, json_schema_extra={"pattern": "^/"})]
Where = Annotated[str, Field(min_length=1, max_length=64)]
FamilyName = Literal["sd15", "sdxl", "flux"]


class Resolution(WholeNumbers):
    """Absent, `{}` or a missing side: the profile's largest (one default whichever way it is left out)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    width: Pixels | None = Field(None, description="pixels, multiple of 8; the profile's largest when absent")
    height: Pixels | None = Field(None, description="pixels, multiple of 8; the profile's largest when absent")


class LoraRef(BaseModel):
    """One LoRA of a job's stack: its id (the file name without extension, as GET /loras lists it) and strength."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: ModelName = Field(description="LoRA file name without extension, as GET /loras lists it")
    strength: LoraStrength | None = Field(None, description="model and CLIP strength; the lora_strength setting "
                                                            "when absent")


class LoraUse(LoraRef):
    """A LoRA as a job applied it: the file and, where this machine has it, its SHA-256 (the log records it)."""

    file: ModelName | None = None
    sha256: str | None = None


MAX_LORAS = 8  # the wire's bound; each profile's max_loras (3 by default) is the limit a job is held to

IMAGE_FIELDS = ("pose_image_path", "init_image_path", "init_job_id")  # the files a whole workflow may load


class GenerationRequest(WholeNumbers):
    """What a client asks for: the parameters (a template is chosen and slot-filled) or a whole
    `workflow`. Strict: `true` is not a seed and `"2"` is not a step count. The wire model
    (`sidecar.api.models.JobRequest`) is this with camelCase names."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    prompt: Prompt | None = None
    negative_prompt: NegativePrompt | None = None
    lora_id: ModelName | None = Field(None, description="LoRA file name without extension, as GET /loras lists it")
    lora_strength: LoraStrength | None = None
    loras: list[LoraRef] | None = Field(None, max_length=MAX_LORAS, description=(
        "several LoRAs, applied in this order (chained loaders), up to the profile's max_loras; `loraId` and "
        "`loraStrength` are the one-LoRA form of it"))
    seed: Seed | None = Field(None, description="random when absent")
    steps: Steps | None = None
    cfg: Cfg | None = None
    sampler: SamplerName | None = None
    scheduler: SamplerName | None = None
    resolution: Resolution | None = None
    checkpoint: ModelName | None = Field(None, description="checkpoint file name")
    pose_image_path: PathText | None = Field(None, description="absolute path of a pose image")
    controlnet_strength: ControlnetStrength | None = None
    denoise: Denoise | None = Field(None, description="below 1 needs an init image: how much of it is redrawn "
                                                 "(0.05 keeps nearly all of it, 1.0 ignores it)")
    init_image_path: PathText | None = Field(None, description="absolute path of an init image (img2img); resized "
                                                               "to the job's size")
    init_job_id: ModelName | None = Field(None, description="a succeeded job whose image is the init image (img2img)")
    # Strict: true, "1" and 1.5 are not a batch size (invalid_field; 1.0 is JSON's 1, see WholeNumbers); an int
    # other than 1 is refused by the profile.
    batch_size: StrictInt | None = Field(
        None, validation_alias=AliasChoices("batchSize", "batch_size"),
        description="accepted only as 1 (the profile's limit)",
    )
    workflow: dict[str, Any] | None = Field(
        None, description="a whole filled API-format workflow (reproduce); excludes the parameter fields"
    )
    where: Where | None = Field(None, description="where the job may run: `local` (this machine), `any`, a tag or "
                                                  "a backend name of the [[backends]] tables; default: the "
                                                  "default_where setting")
    refined_from: RefinedFrom | None = Field(
        None, description="provenance of a refined prompt (POST /prompt/refine's refinedFrom), kept with the job")
    upscale_model: ModelName | None = Field(
        None, description="also save the image upscaled by this model of models/upscale_models/ (file name, e.g. "
                          "`4x-UltraSharp.pth`): the job's `upscaled` output, for print; the image itself keeps the "
                          "generation size")

    def parameter_fields(self) -> list[str]:
        """The parameter fields given (a whole workflow takes none but its images: `pose_image_path` and
        `init_image_path` / `init_job_id`)."""
        return [name for name in type(self).model_fields
                if name not in ("workflow", "batch_size", "where", "upscale_model", *IMAGE_FIELDS)
                and getattr(self, name) is not None]


class JobParams(BaseModel):
    """The resolved parameters of a job. Every field is optional because a whole workflow need not
    have a LoRA, a pose or even a sampler the daemon recognises."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    prompt: Prompt | None = None
    negative_prompt: NegativePrompt | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    cfg: Cfg | None = None
    sampler: SamplerName | None = None
    scheduler: SamplerName | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    checkpoint: ModelName | None = None
    family: FamilyName | None = None  # the checkpoint's, read from its header; None: unknown
    lora_id: ModelName | None = None  # the first LoRA (the one-LoRA form, as clients read it)
    lora_strength: LoraStrength | None = None
    loras: list[LoraUse] | None = None  # every LoRA, in the order applied, strengths resolved
    controlnet_strength: ControlnetStrength | None = None
    denoise: Denoise | None = None
    pose_image_path: PathText | None = None
    init_image_path: PathText | None = None  # the init image as the client named it (or the job's image)
    init_job_id: ModelName | None = None
    refined_from: RefinedFrom | None = None
    upscale_model: ModelName | None = None  # the print upscale's model (models/upscale_models/)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> JobParams:
        """A stored row's params (snake_case; camelCase in rows written before). A value that no longer
        passes (a row from before the limits held for whole workflows) is left out, never a 500."""
        values = {to_snake(k): v for k, v in (data or {}).items() if to_snake(k) in cls.model_fields}
        while True:
            try:
                return cls.model_validate(values, strict=False)
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
                if not bad & values.keys():
                    return cls()
                values = {k: v for k, v in values.items() if k not in bad}

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_ADAPTERS = {name: TypeAdapter(info.annotation, config=ConfigDict(strict=True))
             for name, info in JobParams.model_fields.items()}


def check_param(name: str, value: Any, field: str, details: dict[str, Any] | None = None) -> Any:
    """`value` held to the limits of job parameter `name`; `invalid_field` naming `field` otherwise."""
    try:
        return _ADAPTERS[name].validate_python(value)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise InvalidField(f"{field}: {problem} (the {name} limit of every job), got {value!r}.",
                           {"field": field, "value": value if isinstance(value, (str, int, float)) else None,
                            **(details or {})}) from None


@dataclass(frozen=True)
class JobSpec:
    """A job ready to queue: what it renders with and the graph a backend runs."""

    params: JobParams
    template: str | None
    workflow: dict[str, Any]
    pose_image: Path | None
    where: str | None = None  # None: the default_where setting
