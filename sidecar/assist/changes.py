"""What the model is asked for: a change set, as pydantic models whose JSON schema goes to Ollama as
`format` (its structured outputs) and which validate the answer.

A change adds, removes or replaces one tag, in a region of the prompt (framing, pose, ...). The
region orders additions and tells the artist what a change is about; it never lets a change touch
more than its one tag. Tags are single phrases: the schema itself forbids commas and new lines, so
one change can never smuggle in several tags.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

Region = Literal["framing", "pose", "expression", "appearance", "outfit", "setting", "lighting", "style", "other"]
REGIONS: tuple[str, ...] = Region.__args__  # type: ignore[attr-defined]
# At least one character that is neither a comma nor white space: a blank tag, which the schema would
# otherwise admit, strips to nothing.
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80,
                                       pattern=r"^[^,\n]*[^,\s][^,\n]*$")]


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str
    region: Region = Field(description="the part of the picture the tag is about")
    tag: Tag
    reason: str = Field("", max_length=200, description="a few words: which part of the feedback this follows")


class AddChange(_Change):
    op: Literal["add"] = Field(description="add a tag")
    tag: Tag = Field(description="the new tag")
    replacement: ClassVar[None] = None  # only a replace has one; read alike on every change


class RemoveChange(_Change):
    op: Literal["remove"] = Field(description="remove a tag of the prompt")
    tag: Tag = Field(description="the tag of the prompt to remove")
    replacement: ClassVar[None] = None


class ReplaceChange(_Change):
    op: Literal["replace"] = Field(description="replace a tag of the prompt with another")
    tag: Tag = Field(description="the tag of the prompt to replace")
    replacement: Tag = Field(description="the tag that takes its place")


# One shape per `op` (a discriminated union): the schema Ollama constrains its answer with admits a
# `replacement` only where one is needed, and requires it there, so whatever it admits validates.
Change = Annotated[AddChange | RemoveChange | ReplaceChange, Field(discriminator="op")]
CHANGE = TypeAdapter(Change)


class ChangeSet(BaseModel):
    """The model's whole answer to one piece of feedback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    changes: list[Change] = Field(max_length=24, description="the edits, in order")
    summary: str = Field("", max_length=300, description="one sentence on what changes")


class ImageNotes(BaseModel):
    """The vision pass (`--look`): what the picked image shows that the feedback is about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observations: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]] = \
        Field(max_length=12, description="short statements about the image: pose, framing, light, what looks wrong")
