"""`character.toml` at the project root: who must stay the same whatever a prompt change says.

    trigger = "spyke_plasma_v1"
    locked = ["right bracer", "left knee pauldron", "ginger hair", "white cloak"]
    locked_negative = ["mirrored", "left bracer"]
    references = ["refs/*.png"]

`locked` traits are never removed from a prompt or swapped to the other side; `locked_negative` tags
never enter it (they belong in the negative prompt). It is found from a prompt file's folder upwards,
so every page of a project shares one. `references` are globs (relative to the file's folder, the
project root) of crops of the character the artist approves: the likeness judge's reference set.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sidecar.assist.tags import key
from sidecar.errors import CharacterInvalid

FILE_NAME = "character.toml"
MAX_BYTES = 64 * 1024


class CharacterSheet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger: str = Field(min_length=1, max_length=100, description="the LoRA's trigger word, first in every prompt")
    locked: list[str] = Field(default_factory=list, max_length=64,
                              description="traits no prompt change may remove or mirror")
    locked_negative: list[str] = Field(default_factory=list, max_length=64,
                                       description="tags no prompt change may add to the prompt")
    references: list[str] = Field(default_factory=list, max_length=64,
                                  description="globs of approved crops of the character, relative to the "
                                              "project root (the likeness judge's reference set)")

    @field_validator("references")
    @classmethod
    def _inside(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern.strip() or pattern.startswith(("/", "~")) or ".." in pattern.split("/"):
                raise ValueError(f"{pattern!r} must be a glob relative to the project root, without '..'")
        return v

    @field_validator("trigger")
    @classmethod
    def _one_tag(cls, v: str) -> str:
        v = v.strip()
        if not v or "," in v or "\n" in v:
            raise ValueError("must be one tag without commas")
        return v

    @field_validator("locked", "locked_negative")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        out = []
        for tag in v:
            tag = tag.strip()
            if not tag or "," in tag or len(tag) > 100:
                raise ValueError(f"{tag!r} must be one tag of at most 100 characters, without commas")
            out.append(tag)
        return out

    def is_trigger(self, tag: str) -> bool:
        return key(tag) == key(self.trigger)

    def locked_keys(self) -> set[str]:
        return {key(t) for t in self.locked}

    def negative_keys(self) -> set[str]:
        return {key(t) for t in self.locked_negative}


def find_character(start: Path, stop: Path | None = None) -> Path | None:
    """The nearest `character.toml` in `start` (a folder or a file's folder) or a folder above it."""
    folder = start if start.is_dir() else start.parent
    for candidate in (folder, *folder.parents):
        path = candidate / FILE_NAME
        if path.is_file():
            return path
        if stop is not None and candidate == stop:
            break
    return None


def load_character(path: Path) -> CharacterSheet:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise CharacterInvalid(f"{path} is {size} bytes; a character sheet is at most {MAX_BYTES}.",
                                   {"file": str(path)})
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CharacterInvalid(f"{path} cannot be read ({exc}).", {"file": str(path)}) from None
    except tomllib.TOMLDecodeError as exc:
        raise CharacterInvalid(f"{path} is not valid TOML: {exc}.", {"file": str(path)}) from None
    try:
        return CharacterSheet.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise CharacterInvalid(f"{path} is invalid: {problems}. Keys: trigger, locked, locked_negative, references.",
                               {"file": str(path)}) from None
