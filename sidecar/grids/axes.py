"""Grid axes: `name=v1,v2,...` over any job parameter of `POST /jobs`, each value held to that
parameter's own limits (`sidecar.jobs.params`) before anything is submitted.

Names are the API's camelCase fields (`loraStrength`, `seed`, `steps`, `cfg`, `sampler`, `checkpoint`,
`prompt`...), plus `width` and `height` (the resolution's sides) and `poseImage` (a pose file, as in
the page prompts' front matter). Values are separated by commas, or by `||` when a value holds commas
(prompts); integer parameters also take a range `1..8`. `loraId=none` renders without a LoRA.

`lora:<id>=0.2,0.6,none` is one LoRA's strength in the job's LoRA stack (`loras`): the LoRA is added to
the stack (after the ones the prompt names) or its strength changed, `none` leaves it out; so two LoRA
combinations compare side by side (`--x lora:ink_style=0.3,0.6 --y lora:screentone=none,0.5`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from sidecar.errors import InvalidField
from sidecar.jobs.params import GenerationRequest, LoraStrength, Pixels

# Fields that are not one parameter of a template job: a whole workflow, the batch size (always 1),
# the resolution (its sides are `width` and `height`).
NOT_AXES = {"workflow", "batch_size", "resolution"}
ALIASES = {"poseImage": "poseImagePath"}
MAX_VALUES = 100
NONE_WORDS = {"none", "null", "-"}
STACK_PREFIX = "lora:"  # `lora:<id>`: one LoRA's strength in the stack
STRENGTH = TypeAdapter(LoraStrength, config=ConfigDict(strict=False))


def _fields() -> dict[str, TypeAdapter[Any]]:
    adapters: dict[str, TypeAdapter[Any]] = {}
    lax = ConfigDict(strict=False)
    for name, info in GenerationRequest.model_fields.items():
        if name not in NOT_AXES:
            adapters[to_camel(name)] = TypeAdapter(info.annotation, config=lax)
    for side in ("width", "height"):
        adapters[side] = TypeAdapter(Pixels, config=lax)
    return adapters


FIELDS = _fields()


@dataclass(frozen=True)
class Axis:
    flag: str  # "x", "y", "z"
    name: str  # the request field (camelCase), or width/height
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        shown = "none" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        if self.name == "poseImagePath" and value is not None:
            shown = Path(str(value)).name
        return f"{self.name}={shown}"


def known_names() -> list[str]:
    return sorted([*FIELDS, *ALIASES, f"{STACK_PREFIX}<LoRA id>"])


def _split(raw: str) -> list[str]:
    parts = raw.split("||") if "||" in raw else raw.split(",")
    return [p.strip() for p in parts]


def _expand_range(text: str, flag: str, name: str) -> list[str] | None:
    if ".." not in text:
        return None
    start, _, end = text.partition("..")
    try:
        a, b = int(start), int(end)
    except ValueError:
        return None
    if b < a or b - a + 1 > MAX_VALUES:
        raise InvalidField(f"--{flag} {name}: the range {text} must count up and hold at most {MAX_VALUES} values.",
                           {"field": f"--{flag}", "value": text})
    return [str(v) for v in range(a, b + 1)]


def check_value(name: str, text: str, where: str, base: Path | None = None) -> Any:
    """One value of parameter `name` from its text, held to the parameter's limits."""
    if (name == "loraId" or name.startswith(STACK_PREFIX)) and str(text).lower() in NONE_WORDS:
        return None
    if name.startswith(STACK_PREFIX):
        try:
            return STRENGTH.validate_python(text)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"]
            raise InvalidField(f"{where}: {text!r} is not a valid LoRA strength ({problem}).",
                               {"field": where, "value": text}) from None
    if name == "poseImagePath":
        path = Path(text).expanduser()
        text = str((base / path).resolve() if base is not None and not path.is_absolute() else path.resolve())
    adapter = FIELDS[name]
    try:
        value = adapter.validate_python(text)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise InvalidField(f"{where}: {text!r} is not a valid {name} ({problem}).",
                           {"field": where, "value": text}) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidField(f"{where}: {text!r} is not a finite number.", {"field": where, "value": text})
    return value


def resolve_name(raw: str, where: str) -> str:
    if raw.startswith(STACK_PREFIX):
        lora_id = raw[len(STACK_PREFIX):]
        if not lora_id.strip() or any(c in lora_id for c in "/\\\x00") or ".." in lora_id or len(lora_id) > 200:
            raise InvalidField(f"{where}: {raw!r} must name a LoRA id (its file name without extension).",
                               {"field": where, "value": raw})
        return raw
    name = ALIASES.get(raw, raw)
    if name not in FIELDS:
        raise InvalidField(f"{where}: {raw!r} is not a job parameter. Known: {', '.join(known_names())}.",
                           {"field": where, "value": raw, "known": known_names()})
    return name


def parse_axis(flag: str, raw: str, base: Path | None = None) -> Axis:
    """`--x loraStrength=0.6,0.8,1.0` -> Axis("x", "loraStrength", (0.6, 0.8, 1.0))."""
    where = f"--{flag}"
    key, sep, values_text = raw.partition("=")
    if not sep or not key.strip() or not values_text.strip():
        raise InvalidField(f"{where} must be NAME=V1,V2,... (e.g. loraStrength=0.6,0.8,1.0), got {raw!r}.",
                           {"field": where, "value": raw})
    name = resolve_name(key.strip(), where)
    texts: list[str] = []
    for part in _split(values_text):
        if not part:
            raise InvalidField(f"{where} {name}: an empty value in {values_text!r}.", {"field": where, "value": raw})
        expanded = _expand_range(part, flag, name) if name in ("seed", "steps", "width", "height") else None
        texts.extend(expanded or [part])
    if len(texts) > MAX_VALUES:
        raise InvalidField(f"{where} {name}: {len(texts)} values; at most {MAX_VALUES} per axis.",
                           {"field": where, "limit": MAX_VALUES})
    values = tuple(check_value(name, t, f"{where} {name}", base) for t in texts)
    if len(set(map(repr, values))) != len(values):
        raise InvalidField(f"{where} {name}: a value is listed twice ({values_text}).", {"field": where, "value": raw})
    return Axis(flag, name, values)


def apply(body: dict[str, Any], name: str, value: Any) -> None:
    """Set one parameter on a POST /jobs body (width/height go into `resolution`; None removes it)."""
    if name.startswith(STACK_PREFIX):
        _set_in_stack(body, name[len(STACK_PREFIX):], value)
    elif name in ("width", "height"):
        body.setdefault("resolution", {})[name] = value
    elif value is None:
        body.pop(name, None)
        if name == "loraId":
            body.pop("loraStrength", None)
    else:
        body[name] = value


def _set_in_stack(body: dict[str, Any], lora_id: str, strength: float | None) -> None:
    """One LoRA's strength in the body's stack (`loras`; a one-LoRA `loraId` becomes its first entry)."""
    stack = [dict(entry) for entry in body.get("loras") or []]
    if not stack and body.get("loraId"):
        first = {"id": body["loraId"]}
        if body.get("loraStrength") is not None:
            first["strength"] = body["loraStrength"]
        stack = [first]
    body.pop("loraId", None)
    body.pop("loraStrength", None)
    stack = [entry for entry in stack if entry.get("id") != lora_id] if strength is None else stack
    for entry in stack:
        if entry.get("id") == lora_id:
            entry["strength"] = strength
            break
    else:
        if strength is not None:
            stack.append({"id": lora_id, "strength": strength})
    if stack:
        body["loras"] = stack
    else:
        body.pop("loras", None)
