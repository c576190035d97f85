"""A concept's fields as data: the pydantic models of `concepts/NAME.toml` and of the API's bodies.

Each field is a short text (`value`) and a `locked` flag; `extra` is a list of free tags with one flag.
Texts are one line and hold at most 300 characters: a field is a phrase or a few comma-separated tags,
not a prompt. `render` keeps what the rounds render with (checkpoint, LoRA stack, size), so the next
round renders like the last unless a round's request says otherwise.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from sidecar.jobs.params import LoraStrength, Pixels, Steps
from sidecar.whole_numbers import WholeNumbers

FIELD_NAMES: tuple[str, ...] = ("subject", "pose", "expression", "outfit", "background", "style", "mood", "lighting")
FieldName = Literal["subject", "pose", "expression", "outfit", "background", "style", "mood", "lighting"]
AnyField = Literal["subject", "pose", "expression", "outfit", "background", "style", "mood", "lighting", "extra"]
ALL_FIELDS: tuple[str, ...] = (*FIELD_NAMES, "extra")

# One line (a new line would read as two prompt lines, or a `+++` fence in a page's prompt file).
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=300, pattern=r"^[^\n\r]*$")]
# One tag: no comma (it would be two), not blank.
ExtraTag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80,
                                            pattern=r"^[^,\n\r]*[^,\s][^,\n\r]*$")]


# A model file's bare name as the job builder takes it (`check_name`: no separator, no `..`, not blank), said
# in the schema so a client (and the fuzzer) knows it before a request is refused for it.
_C = r"[^./\\\x00]"
BareName = Annotated[str, StringConstraints(
    min_length=1, max_length=200,
    pattern=rf"^(?:{_C}|\.{_C})*(?:[^\s\x1c-\x1f./\\\x00]|\.(?:{_C}|$))(?:{_C}|\.{_C})*\.?$")]


class LoraUse(BaseModel):
    """One LoRA of a stack: its id (GET /loras) and strength (default: the lora_strength setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: BareName
    strength: LoraStrength | None = None


def _once_each(stack: list[LoraUse] | None) -> list[LoraUse] | None:
    """A LoRA given twice would be refused at render time (POST /jobs: invalid_field): refused here, when
    the concept is saved (or read from a hand-edited file), so a stack that cannot render is never kept."""
    seen: set[str] = set()
    for use in stack or []:
        if use.id in seen:
            raise ValueError(f"LoRA {use.id!r} is listed twice; give it once with the strength wanted")
        seen.add(use.id)
    return stack


LoraStack = Annotated[list[LoraUse] | None, AfterValidator(_once_each)]


class Wire(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class ConceptField(Wire):
    value: Text = Field("", description="a phrase or a few comma-separated tags ('' : not said)")
    locked: bool = Field(False, description="true: the field's tags go into every prompt verbatim and the "
                                            "feedback interpreter never changes it")


class ExtraTags(Wire):
    tags: list[ExtraTag] = Field(default_factory=list, max_length=32, description="free tags, each kept as written")
    locked: bool = False


class ConceptFields(Wire):
    subject: ConceptField = Field(default_factory=ConceptField)
    pose: ConceptField = Field(default_factory=ConceptField)
    expression: ConceptField = Field(default_factory=ConceptField)
    outfit: ConceptField = Field(default_factory=ConceptField)
    background: ConceptField = Field(default_factory=ConceptField)
    style: ConceptField = Field(default_factory=ConceptField)
    mood: ConceptField = Field(default_factory=ConceptField)
    lighting: ConceptField = Field(default_factory=ConceptField)
    extra: ExtraTags = Field(default_factory=ExtraTags)

    def text(self, name: str) -> str:
        """A field's text as the prompt engineer reads it (extra: its tags, comma-separated)."""
        return ", ".join(self.extra.tags) if name == "extra" else getattr(self, name).value

    def locked(self, name: str) -> bool:
        return bool(getattr(self, name).locked)

    def with_value(self, name: str, value: str) -> ConceptFields:
        if name == "extra":
            tags = [t.strip() for t in value.split(",") if t.strip()]
            return self.model_copy(update={"extra": ExtraTags(tags=tags, locked=self.extra.locked)})
        field = getattr(self, name)
        return self.model_copy(update={name: ConceptField(value=value, locked=field.locked)})


class RenderSettings(Wire):
    """What a round renders with; anything left out comes from the project's pipeline.toml `[generate]`,
    then the daemon's defaults (as `generate` does)."""

    checkpoint: BareName | None = Field(None, description="checkpoint file name (its family picks the prompt style)")
    loras: LoraStack = Field(None, max_length=3, description="the LoRA stack ([] : none, even if "
                                                                         "pipeline.toml names one)")
    steps: Steps | None = None
    width: Pixels | None = None
    height: Pixels | None = None


class Concept(Wire):
    """`concepts/NAME.toml`."""

    fields: ConceptFields = Field(default_factory=ConceptFields)
    render: RenderSettings = Field(default_factory=RenderSettings)
