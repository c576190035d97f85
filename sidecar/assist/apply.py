"""Stage 2 of refinement: code, not the model, applies a change set to a prompt and guarantees:

1. the trigger word stays the first tag (it is moved there if the prompt had it elsewhere);
2. a locked trait is never removed or replaced, and never mirrored (no `left bracer` while
   `right bracer` is locked), and no `locked_negative` or flip tag (`mirrored`) enters the prompt;
3. nothing enters the prompt that the change set did not name: every tag of the result is a tag of
   the original or the `tag`/`replacement` of an applied change.

Each change comes back with what became of it (applied, refused with the reason, or nothing to do),
so the artist sees why the prompt did not change the way the model proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sidecar.assist.changes import Change, ChangeSet
from sidecar.assist.character import CharacterSheet
from sidecar.assist.tags import FLIP_TAGS, key, mirrors_any

Status = Literal["applied", "refused", "unchanged"]


@dataclass(frozen=True)
class Outcome:
    change: Change
    status: Status
    note: str = ""


@dataclass
class Applied:
    tags: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def applied(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "applied"]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "refused"]


def _find(tags: list[str], tag: str) -> int | None:
    k = key(tag)
    return next((i for i, t in enumerate(tags) if key(t) == k), None)


def _why_not_removed(tag: str, sheet: CharacterSheet | None) -> str | None:
    if sheet is None:
        return None
    if sheet.is_trigger(tag):
        return f"{sheet.trigger} is the trigger word: it stays, first"
    if key(tag) in sheet.locked_keys():
        return f"{tag!r} is a locked trait of the character (character.toml)"
    return None


def why_not_added(tag: str, sheet: CharacterSheet | None) -> str | None:
    """Why the character's rules keep `tag` out of a prompt (None: they allow it), whatever its source: a
    refinement's change or a composed concept."""
    if key(tag) in FLIP_TAGS:
        return f"{tag!r} marks a mirrored image; the character is never drawn mirrored"
    if sheet is None:
        return None
    if key(tag) in sheet.negative_keys():
        return f"{tag!r} is in locked_negative (character.toml): it never enters the prompt"
    trait = mirrors_any(tag, sheet.locked)
    if trait is not None and key(tag) not in sheet.locked_keys():
        return f"{tag!r} mirrors the locked trait {trait!r}: that detail stays on its side"
    return None


def apply_changes(prompt_tags: list[str], change_set: ChangeSet, sheet: CharacterSheet | None) -> Applied:
    tags = list(prompt_tags)
    result = Applied(tags)
    for change in change_set.changes:
        result.outcomes.append(_apply_one(tags, change, sheet))
    # Duplicates by key go (an add of a tag the prompt spells differently); the first spelling stays.
    seen: set[str] = set()
    tags[:] = [t for t in tags if not (key(t) in seen or seen.add(key(t)))]  # type: ignore[func-returns-value]
    if sheet is not None:
        at = _find(tags, sheet.trigger)
        if at is None:
            result.warnings.append(f"the prompt has no trigger word {sheet.trigger!r}; it was not added "
                                   "(only changes the model proposed are applied)")
        elif at != 0:
            tags.insert(0, tags.pop(at))
    result.tags = tags
    return result


def _apply_one(tags: list[str], change: Change, sheet: CharacterSheet | None) -> Outcome:
    if change.op == "add":
        why = why_not_added(change.tag, sheet)
        if why:
            return Outcome(change, "refused", why)
        if _find(tags, change.tag) is not None:
            return Outcome(change, "unchanged", "already in the prompt")
        tags.append(change.tag)
        return Outcome(change, "applied")
    at = _find(tags, change.tag)
    why = _why_not_removed(change.tag, sheet)
    if why:
        return Outcome(change, "refused", why)
    if change.op == "remove":
        if at is None:
            return Outcome(change, "unchanged", "not in the prompt")
        tags.pop(at)
        return Outcome(change, "applied")
    assert change.replacement is not None
    if key(change.replacement) == key(change.tag):
        return Outcome(change, "unchanged", "the replacement is the same tag")
    why = why_not_added(change.replacement, sheet)
    if why:
        return Outcome(change, "refused", why)
    if at is None:
        if _find(tags, change.replacement) is not None:
            return Outcome(change, "unchanged", "not in the prompt; the replacement already is")
        tags.append(change.replacement)
        return Outcome(change, "applied", f"{change.tag!r} was not in the prompt: added {change.replacement!r}")
    if _find(tags, change.replacement) is not None:
        tags.pop(at)
        return Outcome(change, "applied", "the replacement was already in the prompt")
    tags[at] = change.replacement
    return Outcome(change, "applied")
