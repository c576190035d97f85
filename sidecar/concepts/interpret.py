"""The feedback interpreter: a round's picks, rejections (each with an optional word) and the artist's
words -> changes to the concept's fields, for the next round.

1. Optionally the vision analyzer (`concept_vision_model`, else `vision_model`) describes the first
   picked image ("more like this": what to keep), as `refine --look` does.
2. The interpreter (`concept_interpret_model`, else `prompt_model`; structured output, `FieldChanges`)
   proposes a new value per field to change, reading the intent's preferences too.
3. Code decides (`apply_changes`): a change to a locked field is refused, whatever the model says; a value
   with a tag the character forbids (`locked_negative`, mirrored) is refused; the same value is
   unchanged. The model never touches the character: its traits are not fields.

Without Ollama the feedback is still kept in the intent (the caller writes it); no field changes, and the
answer's `message` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sidecar.assist.apply import why_not_added
from sidecar.assist.changes import ImageNotes
from sidecar.assist.character import CharacterSheet
from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.assist.tags import split_tags
from sidecar.concepts.compose import OLLAMA_ERRORS, absent
from sidecar.concepts.fields import ALL_FIELDS, AnyField, ConceptFields
from sidecar.config import Settings

Value = Annotated[str, StringConstraints(strip_whitespace=True, max_length=300, pattern=r"^[^\n\r]*$")]
Status = Literal["applied", "refused", "unchanged"]


class FieldChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: AnyField = Field(description="the concept field to change")
    value: Value = Field(description="its new value in full: a phrase or comma-separated tags ('' clears it)")
    reason: str = Field("", max_length=200, description="which part of the feedback this follows")


class FieldChanges(BaseModel):
    """The interpreter's whole answer to one round's feedback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    changes: list[FieldChange] = Field(max_length=9, description="at most one change per field")
    summary: str = Field("", max_length=300, description="one sentence on what the next round changes")


@dataclass(frozen=True)
class ChangeOutcome:
    field: str
    old: str
    new: str
    reason: str
    status: Status
    note: str = ""


@dataclass
class Interpretation:
    fields: ConceptFields
    outcomes: list[ChangeOutcome] = field(default_factory=list)
    summary: str = ""
    observations: list[str] | None = None
    model: str | None = None
    vision_model: str | None = None
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Feedback:
    """One round's feedback as the interpreter reads it (prompts of the picked and rejected images)."""

    prompt: str
    picks: int
    rejects: list[str]  # each rejection's reason ('' when none was given)
    text: str
    preferences: list[str]


SYSTEM = """You help a manga artist steer a concept: structured fields (subject, pose, expression, outfit,
background, style, mood, lighting, extra tags) that are composed into an image prompt. Four images were
rendered from the prompt; the artist picked some, rejected some (with a reason) and said something.
Turn that into changes to the fields for the next round:
- give each changed field's whole new value; change nothing the feedback does not ask for;
- never change a locked field; the character's traits are not fields and never change;
- follow the artist's standing preferences;
Answer with JSON only, matching the schema."""

LOOK = """You look at an image a manga artist picked from a round of variations ("more like this"). Say
briefly what it shows that the next round should keep: pose, framing, background, light, mood.
Answer with JSON only, matching the schema."""


def question(fields: ConceptFields, feedback: Feedback, notes: ImageNotes | None) -> str:
    lines = ["Fields:"]
    for name in ALL_FIELDS:
        lines.append(f"- {name}: {fields.text(name) or '(empty)'}" + (" [locked: never change]"
                                                                       if fields.locked(name) else ""))
    lines.append(f"The prompt rendered: {feedback.prompt}")
    lines.append(f"Picked: {feedback.picks} of the images")
    for reason in feedback.rejects:
        lines.append(f"Rejected an image: {reason or '(no reason given)'}")
    if feedback.text:
        lines.append(f"The artist says: {feedback.text}")
    if notes is not None and notes.observations:
        lines.append("The picked image shows: " + "; ".join(notes.observations))
    if feedback.preferences:
        lines.append("Standing preferences (from earlier rounds): " + "; ".join(feedback.preferences))
    return "\n".join(lines)


def apply_changes(fields: ConceptFields, answer: FieldChanges, sheet: CharacterSheet | None
                  ) -> tuple[ConceptFields, list[ChangeOutcome]]:
    outcomes: list[ChangeOutcome] = []
    done: set[str] = set()
    for change in answer.changes:
        old = fields.text(change.field)
        new = ", ".join(split_tags(change.value)) if change.field == "extra" else change.value

        def out(status: Status, note: str = "") -> ChangeOutcome:
            return ChangeOutcome(change.field, old, new, change.reason, status, note)  # noqa: B023

        if fields.locked(change.field):
            outcomes.append(out("refused", f"{change.field} is locked: it stays {old!r}"))
            continue
        if change.field in done:
            outcomes.append(out("refused", f"{change.field} was already changed by this answer"))
            continue
        why = next((w for t in split_tags(new) if (w := why_not_added(t, sheet))), None)
        if why:
            outcomes.append(out("refused", why))
            continue
        if change.field == "extra" and (len(split_tags(new)) > 32 or any(len(t) > 80 for t in split_tags(new))):
            outcomes.append(out("refused", "extra takes at most 32 tags of at most 80 characters"))
            continue
        if new == old:
            outcomes.append(out("unchanged", "the same value"))
            continue
        fields = fields.with_value(change.field, new)
        done.add(change.field)
        outcomes.append(out("applied"))
    return fields, outcomes


async def interpret(fields: ConceptFields, sheet: CharacterSheet | None, feedback: Feedback, settings: Settings,
                    *, look: bytes | None = None) -> Interpretation:
    result = Interpretation(fields)
    name = settings.concept_interpret_model or settings.prompt_model
    try:
        async with OllamaAssistant(settings.ollama_url, settings.ollama_timeout) as assistant:
            model = await assistant.model(name)
            notes = None
            if look is not None:
                vision_name = settings.concept_vision_model or settings.vision_model
                try:
                    vision = await assistant.model(vision_name)
                    await assistant.require_vision(vision, "concept_vision_model")
                    notes = await assistant.ask(vision, LOOK, f"The prompt: {feedback.prompt}", ImageNotes,
                                                images=[look])
                    result.vision_model = vision.name
                    result.observations = list(notes.observations)
                except OLLAMA_ERRORS as exc:  # the look is optional: the interpreter goes on without it
                    result.messages.append(absent(exc, "vision analyzer") + " The round's feedback was read "
                                           "without a look at the picked image.")
            answer = await assistant.ask(model, SYSTEM, question(fields, feedback, notes), FieldChanges)
    except OLLAMA_ERRORS as exc:
        result.messages.append(absent(exc, "feedback interpreter") + " The feedback is kept in the intent; "
                               "change the fields yourself for the next round.")
        return result
    result.model = model.name
    result.summary = answer.summary
    result.fields, result.outcomes = apply_changes(fields, answer, sheet)
    return result
