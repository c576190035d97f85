"""The prompt engineer: a concept's fields -> an SD prompt for the job's model family, as tags for the SD
1.5 and SDXL (anime) models, as natural phrases for Flux.

1. The model (Ollama, structured output: `ComposeAnswer`'s schema as `format`) proposes parts, each one
   tag or phrase naming the field it renders.
2. Code decides (`assemble`), as `sidecar.assist.apply` does for refinement:
   - the character's trigger word first, then its locked traits, verbatim, always;
   - a locked field's tags verbatim, whatever the model said about it;
   - a part for an empty field, or with a word no field says (`grounding`), is refused, with the reason;
   - nothing `locked_negative`, mirrored (`mirrored`, a locked trait's other side) enters the prompt;
   - a field the model rendered nothing usable for keeps its own tags as written: nothing is lost.
3. Without Ollama (not running, model not pulled, a timeout, nonsense twice) the prompt is the fields as
   written (`composer: "fields"`) and `message` says why; it never fails the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sidecar.assist.apply import why_not_added
from sidecar.assist.character import CharacterSheet
from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.assist.tags import key, split_tags
from sidecar.concepts.fields import ALL_FIELDS, AnyField, ConceptFields
from sidecar.concepts.grounding import invented, words
from sidecar.config import Settings
from sidecar.errors import (
    AssistantAnswerInvalid, OllamaFailed, OllamaModelMissing, OllamaTimeout, OllamaUnavailable, SidecarError,
)

Style = Literal["tags", "sentence"]
Source = Literal["character", "locked", "model", "fields"]
OLLAMA_ERRORS = (OllamaUnavailable, OllamaModelMissing, OllamaTimeout, OllamaFailed, AssistantAnswerInvalid)
Part = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120,
                                        pattern=r"^[^,\n]*[^,\s][^,\n]*$")]


class ComposedPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: AnyField = Field(description="the concept field this part renders")
    text: Part = Field(description="one tag (or, for a sentence prompt, one short phrase), no commas")


class ComposeAnswer(BaseModel):
    """The prompt engineer's whole answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parts: list[ComposedPart] = Field(max_length=48, description="the prompt's parts, in the order they read")


@dataclass(frozen=True)
class ComposedTag:
    field: str  # a field's name, or `character`
    tag: str
    source: Source


@dataclass(frozen=True)
class Refusal:
    field: str
    tag: str
    reason: str


@dataclass
class Composition:
    prompt: str
    negative: str
    tags: list[ComposedTag]
    style: Style
    family: str | None
    composer: Literal["ollama", "fields"]
    refused: list[Refusal] = field(default_factory=list)
    model: str | None = None
    model_digest: str | None = None
    message: str | None = None


def style_for(family: str | None) -> Style:
    return "sentence" if family == "flux" else "tags"


SYSTEM = {
    "tags": """You are the prompt engineer of a manga artist's Stable Diffusion tool ({family} anime model).
Turn the concept's fields into booru-style prompt tags:
- each part is one short tag (no commas) and names the field it comes from;
- use only what the fields say: never add a person, object, place, colour, style, mood or light the fields
  do not name; you may split a field into several tags or shorten it;
- leave out empty fields and the locked fields (the tool adds those verbatim);
Answer with JSON only, matching the schema.""",
    "sentence": """You are the prompt engineer of a manga artist's image tool (a Flux model, which reads plain
sentences). Turn the concept's fields into short natural phrases that read as a description:
- each part is one short phrase (no commas) and names the field it comes from;
- use only what the fields say: never add a person, object, place, colour, style, mood or light the fields
  do not name;
- leave out empty fields and the locked fields (the tool adds those verbatim);
Answer with JSON only, matching the schema.""",
}


def question(fields: ConceptFields, sheet: CharacterSheet | None, preferences: list[str]) -> str:
    lines = ["Concept fields:"]
    for name in ALL_FIELDS:
        text = fields.text(name)
        state = "locked, added verbatim: leave it out" if fields.locked(name) else "" if text else "empty: leave it out"
        lines.append(f"- {name}: {text or '(empty)'}" + (f" [{state}]" if state else ""))
    if sheet is not None:
        lines.append(f"The character (added verbatim by the tool): {sheet.trigger}"
                     + (f", {', '.join(sheet.locked)}" if sheet.locked else ""))
    if preferences:
        lines.append("What the artist prefers: " + "; ".join(preferences))
    return "\n".join(lines)


def vocabulary(fields: ConceptFields, sheet: CharacterSheet | None) -> set[str]:
    vocab: set[str] = set()
    for name in ALL_FIELDS:
        vocab |= words(fields.text(name))
    if sheet is not None:
        vocab |= words(sheet.trigger)
        for trait in sheet.locked:
            vocab |= words(trait)
    return vocab


def assemble(fields: ConceptFields, sheet: CharacterSheet | None, answer: ComposeAnswer | None
             ) -> tuple[list[ComposedTag], list[Refusal]]:
    """The prompt's tags by the rules of the module's docstring (`answer` None: the fields as written)."""
    tags: list[ComposedTag] = []
    refused: list[Refusal] = []
    seen: set[str] = set()

    def put(where: str, tag: str, source: Source) -> bool:
        if key(tag) in seen:
            return False
        seen.add(key(tag))
        tags.append(ComposedTag(where, tag, source))
        return True

    if sheet is not None:
        put("character", sheet.trigger, "character")
        for trait in sheet.locked:
            put("character", trait, "character")
    proposed: dict[str, list[str]] = {name: [] for name in ALL_FIELDS}
    for part in answer.parts if answer is not None else []:
        proposed[part.field].append(part.text)
    vocab = vocabulary(fields, sheet)
    for name in ALL_FIELDS:
        own = split_tags(fields.text(name))
        if fields.locked(name) or not own:
            why = "the field is locked: its own tags go in verbatim" if own else \
                "the field is empty: nothing may be invented for it"
            refused += [Refusal(name, p, why) for p in proposed[name] if key(p) not in {key(t) for t in own}]
        else:
            kept = []
            for part in proposed[name]:
                new = [w for w in invented(part, vocab) if w not in words(name)]
                why = why_not_added(part, sheet) or (f"{', '.join(new)} is in no field of the concept" if new else None) \
                    or (None if words(part) else "it says nothing (no word of the field)")
                if why:
                    refused.append(Refusal(name, part, why))
                else:
                    kept.append(part)
            # Parts that only repeat tags already in the prompt render nothing of this field: its own then.
            if sum(put(name, part, "model") for part in kept):
                continue
        for tag in own:
            why = why_not_added(tag, sheet)
            if why:
                refused.append(Refusal(name, tag, why))
            else:
                put(name, tag, "locked" if fields.locked(name) else "fields")
    return tags, refused


def prompt_text(tags: list[ComposedTag], style: Style) -> str:
    """Tags: comma-separated. A sentence (Flux): the character, then one clause per field, as written."""
    if style == "tags":
        return ", ".join(t.tag for t in tags)
    clauses: list[list[str]] = []
    last = None
    for t in tags:
        if t.field != last or not clauses:
            clauses.append([])
            last = t.field
        clauses[-1].append(t.tag)
    return ". ".join(", ".join(c) for c in clauses) + ("." if clauses else "")


def negative_text(base: str | None, sheet: CharacterSheet | None) -> str:
    """The project's negative prompt with the character's `locked_negative` tags added (once each)."""
    tags = split_tags(base or "")
    have = {key(t) for t in tags}
    for tag in (sheet.locked_negative if sheet is not None else []):
        if key(tag) not in have:
            tags.append(tag)
            have.add(key(tag))
    return ", ".join(tags)


def absent(exc: SidecarError, stage: str) -> str:
    why = exc.message.replace(" Nothing was written.", "").strip()
    return f"The {stage} is not available ({exc.code}): {why}"


async def compose(fields: ConceptFields, sheet: CharacterSheet | None, family: str | None, settings: Settings, *,
                  base_negative: str | None = None, preferences: list[str] | None = None) -> Composition:
    style = style_for(family)
    answer, model, message = None, None, None
    # Only fields the model may render are worth a question: all locked or empty is the fields as written.
    if any(fields.text(n) and not fields.locked(n) for n in ALL_FIELDS):
        name = settings.concept_compose_model or settings.prompt_model
        try:
            async with OllamaAssistant(settings.ollama_url, settings.ollama_timeout) as assistant:
                model = await assistant.model(name)
                answer = await assistant.ask(model, SYSTEM[style].format(family=family or "sd15"),
                                             question(fields, sheet, preferences or []), ComposeAnswer)
        except OLLAMA_ERRORS as exc:
            model = None
            message = absent(exc, "prompt engineer") + " The prompt is the fields as written."
    tags, refused = assemble(fields, sheet, answer)
    return Composition(
        prompt=prompt_text(tags, style), negative=negative_text(base_negative, sheet), tags=tags, style=style,
        family=family, composer="ollama" if answer is not None else "fields", refused=refused,
        model=model.name if model else None, model_digest=model.digest if model else None, message=message)
