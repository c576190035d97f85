"""Page prompt files, `pipeline.toml` defaults and command-line overrides, merged into one job request.

A prompt file is the prompt text, optionally preceded by a TOML front matter block between `+++`
lines. Precedence: command line > front matter > `pipeline.toml` `[generate]` > the daemon's defaults.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from pipeline_stage.errors import InputError, PromptFileMissing
from sidecar.api.models import JobRequest

FENCE = "+++"


class StackedLora(BaseModel):
    """One LoRA of a page's stack (`loras` in front matter or pipeline.toml)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    strength: float | None = None


class GenerateOptions(BaseModel):
    """The per-page generation options (front matter keys, camelCase as in the daemon's API).

    `loraId = ""` means "no LoRA" (TOML has no null), to switch off a LoRA set in pipeline.toml.
    `loras = [{id = "spyke_xl", strength = 0.8}, {id = "ink_style"}]` is a LoRA stack; it replaces
    `loraId` (`loras = []`: no LoRA).
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    negative_prompt: str | None = None
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    lora_id: str | None = None
    lora_strength: float | None = None
    loras: list[StackedLora] | None = None
    steps: int | None = Field(None, ge=1)
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    checkpoint: str | None = None
    denoise: float | None = None
    pose_image: Path | None = Field(None, description="relative to the prompt file (pipeline.toml: to the root)")
    controlnet_strength: float | None = None


class PipelineDefaults(GenerateOptions):
    """`[generate]` in pipeline.toml: the options above plus the daemon's URL. Other tables belong to
    the pipeline's other stages and are left alone."""

    daemon: str | None = None


@dataclass(frozen=True)
class PagePrompt:
    file: Path
    text: str
    options: GenerateOptions


def _invalid(source: Path, exc: ValidationError, where: str) -> InputError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )
    return InputError(f"{where} of {source} is invalid: {problems}.",
                      {"file": str(source), "errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]})


def _toml(text: str, source: Path, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where} of {source} is not valid TOML: {exc}.", {"file": str(source)}) from None


def _anchor_pose(options: GenerateOptions, base: Path) -> GenerateOptions:
    if options.pose_image is not None and not options.pose_image.is_absolute():
        return options.model_copy(update={"pose_image": (base / options.pose_image.expanduser()).resolve()})
    return options


def load_defaults(config: Path) -> PipelineDefaults:
    """The `[generate]` table of pipeline.toml (absent file or table: no defaults)."""
    if not config.is_file():
        return PipelineDefaults()
    data = _toml(config.read_text(encoding="utf-8"), config, "The file")
    table = data.get("generate", {})
    if not isinstance(table, dict):
        raise InputError(f"[generate] in {config} must be a table.", {"file": str(config)})
    try:
        defaults = PipelineDefaults.model_validate(table)
    except ValidationError as exc:
        raise _invalid(config, exc, "[generate]") from None
    return _anchor_pose(defaults, config.parent)  # type: ignore[return-value]


def split_front_matter(raw: str, source: Path) -> tuple[str | None, str]:
    """(front matter TOML or None, body). The opening fence must be the file's first line."""
    text = raw.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != FENCE:
        return None, text
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == FENCE:
            return "".join(lines[1:i]), "".join(lines[i + 1:])
    raise InputError(f"The front matter of {source} opens with {FENCE} on line 1 but is never closed.",
                     {"file": str(source)})


def load_prompt(path: Path) -> PagePrompt:
    if not path.is_file():
        raise PromptFileMissing(f"Prompt file not found: {path}", {"path": str(path)})
    raw = path.read_text(encoding="utf-8")
    front, body = split_front_matter(raw, path)
    options = GenerateOptions()
    if front is not None:
        try:
            options = GenerateOptions.model_validate(_toml(front, path, "The front matter"))
        except ValidationError as exc:
            raise _invalid(path, exc, "The front matter") from None
    text = body.strip()
    if not text:
        raise InputError(f"{path} has no prompt text (after its front matter).", {"file": str(path)})
    return PagePrompt(file=path, text=text, options=_anchor_pose(options, path.parent))


def merge(*layers: GenerateOptions) -> GenerateOptions:
    """Later layers win, field by field, for the fields they set."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({name: getattr(layer, name) for name in layer.model_fields_set
                       if name in GenerateOptions.model_fields})
    return GenerateOptions.model_validate(merged)


def upscale_request(request: JobRequest, model: str, drafts: int | None = None) -> JobRequest:
    """`--upscale MODEL`: the request also asks for the print upscale (`upscaleModel`)."""
    if drafts is not None:
        raise InputError("--upscale makes the print of a page version; drafts are not printed. Upscale the "
                         "chosen one: --from-draft K --upscale MODEL.")
    if not model.strip() or "/" in model or "\\" in model:
        raise InputError(f"--upscale takes a model file name of the daemon's models/upscale_models/, got {model!r}.",
                         {"upscale": model})
    return JobRequest.model_validate({**request.model_dump(exclude_none=True), "upscale_model": model})


def build_request(prompt: str, options: GenerateOptions, source: Path | None = None) -> JobRequest:
    """The POST /jobs body, typed as the daemon's API declares it: only what was set, so the daemon's
    defaults apply to the rest. A value past the API's limits is an input error here, before any submit."""
    if options.pose_image is not None and not options.pose_image.is_file():
        raise InputError(f"Pose image not found: {options.pose_image}", {"path": str(options.pose_image)})
    stack = options.loras
    lora = (options.lora_id or None) if stack is None else None  # "" switches a default LoRA off; loras replaces it
    pose = str(options.pose_image) if options.pose_image is not None else None
    size = {k: v for k, v in (("width", options.width), ("height", options.height)) if v is not None}
    fields = {
        "prompt": prompt,
        "negative_prompt": options.negative_prompt,
        "lora_id": lora,
        "lora_strength": options.lora_strength if lora else None,
        "loras": [ref.model_dump(exclude_none=True) for ref in stack] if stack else None,
        "seed": options.seed,
        "steps": options.steps,
        "cfg": options.cfg,
        "sampler": options.sampler,
        "scheduler": options.scheduler,
        "resolution": size or None,
        "checkpoint": options.checkpoint,
        "denoise": options.denoise,
        "pose_image_path": pose,
        "controlnet_strength": options.controlnet_strength if pose else None,
    }
    try:
        return JobRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{to_camel(str(e['loc'][0])) if e['loc'] else 'request'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        where = f" for {source} (its front matter, pipeline.toml or the command line)" if source else ""
        raise InputError(f"The request{where} is outside the daemon's limits: {problems}.",
                         {"file": str(source) if source else None, "errors": [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                                     for e in exc.errors(include_url=False)]}) from None
