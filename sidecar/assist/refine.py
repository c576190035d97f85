"""Refining a prompt from feedback, start to end (the CLI, `generate --refine` and `POST /prompt/refine`
all call `refine`):

1. with an image to look at (`--look`), the vision model says what it shows (`ImageNotes`);
2. the prompt model turns the feedback (and those notes) into a `ChangeSet` (stage 1, validated);
3. `apply_changes` applies it under the character's invariants (stage 2, code);
4. the result carries the tag diff and its provenance (`RefinedFrom`).

Nothing is written here: the callers show the diff first, then write or render.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from sidecar.assist.apply import Applied, apply_changes
from sidecar.assist.changes import REGIONS, ChangeSet, ImageNotes
from sidecar.assist.character import CharacterSheet
from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.assist.provenance import RefinedFrom
from sidecar.assist.tags import join_tags, key, split_tags

SYSTEM = """You edit Stable Diffusion prompts for a manga artist. A prompt is a list of comma-separated tags.
Turn the artist's feedback into the smallest set of tag changes that does what it asks:
- "add" a new tag, "remove" a tag of the prompt, or "replace" a tag of the prompt with another;
- one tag per change: a short phrase, no commas;
- give each change the region of the picture it is about: """ + ", ".join(REGIONS) + """;
- never touch the trigger word or the locked traits listed below, and never swap left and right;
- change nothing the feedback does not ask for.
Answer with JSON only, matching the schema."""

LOOK = """You look at a generated manga page image for an artist. Say briefly what it shows that the
artist's feedback is about: pose, framing, direction of gaze, light, background, anything that looks wrong.
Answer with JSON only, matching the schema."""


@dataclass
class Refinement:
    original: str
    refined: str
    change_set: ChangeSet
    applied: Applied
    diff: list[str]
    refined_from: RefinedFrom
    notes: ImageNotes | None = None

    @property
    def changed(self) -> bool:
        return self.refined != self.original


def tag_diff(old: list[str], new: list[str]) -> list[str]:
    """One line per tag: `  kept`, `- removed`, `+ added` (compared by key, so a re-weighting shows)."""
    lines: list[str] = []
    matcher = difflib.SequenceMatcher(a=[key(t) for t in old], b=[key(t) for t in new], autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            lines += [f"  {t}" for t in new[b1:b2]]
            continue
        lines += [f"- {t}" for t in old[a1:a2]]
        lines += [f"+ {t}" for t in new[b1:b2]]
    return lines


def _question(prompt: str, feedback: str, sheet: CharacterSheet | None, notes: ImageNotes | None) -> str:
    parts = [f"Prompt: {prompt}", f"Feedback: {feedback}"]
    if sheet is not None:
        parts.append(f"Trigger word (never change): {sheet.trigger}")
        if sheet.locked:
            parts.append(f"Locked traits (never remove, never mirror): {', '.join(sheet.locked)}")
        if sheet.locked_negative:
            parts.append(f"Never add: {', '.join(sheet.locked_negative)}")
    if notes is not None and notes.observations:
        parts.append("What the current image shows: " + "; ".join(notes.observations))
    return "\n".join(parts)


async def refine(assistant: OllamaAssistant, *, prompt: str, feedback: str, sheet: CharacterSheet | None,
                 prompt_model: str, vision_model: str, look_image: Path | None = None,
                 look_bytes: bytes | None = None) -> Refinement:
    """`look_image`/`look_bytes`: the picked image (already checked by the caller) for the vision pass."""
    # Both models are looked up first: a missing one fails before any model runs (and names its pull).
    model = await assistant.model(prompt_model)
    vision = await assistant.model(vision_model) if look_bytes is not None else None
    if vision is not None:
        await assistant.require_vision(vision)
    notes = None
    if vision is not None:
        notes = await assistant.ask(vision, LOOK, f"The artist's feedback: {feedback}\nThe prompt: {prompt}",
                                    ImageNotes, images=[look_bytes])  # type: ignore[list-item]
    change_set = await assistant.ask(model, SYSTEM, _question(prompt, feedback, sheet, notes), ChangeSet)
    old = split_tags(prompt)
    applied = apply_changes(old, change_set, sheet)
    refined = join_tags(applied.tags) if applied.tags != old else prompt
    provenance = RefinedFrom(
        original_prompt=prompt, feedback=feedback, refined_prompt=refined, model=model.name,
        model_digest=model.digest, vision_model=vision.name if vision else None,
        vision_model_digest=vision.digest if vision else None,
        look_image=str(look_image) if look_image is not None and vision is not None else None)
    return Refinement(prompt, refined, change_set, applied, tag_diff(old, applied.tags), provenance, notes)
