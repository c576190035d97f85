"""What the model is asked for: a change set, as pydantic models whose JSON schema goes to Ollama as
`format` (its structured outputs) and which validate the answer.

A change adds, removes or replaces one tag, in a region of the prompt (framing, pose, ...). The
region orders additions and tells the artist what a change is about; it never lets a change touch
more than its one tag. Tags are single phrases: the schema itself forbids commas and new lines, so
one change can never smuggle in several tags.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Region = Literal["framing", "pose", "expression", "appearance", "outfit", "setting", "lighting", "style", "other"]
REGIONS: tuple[str, ...] = Region.__args__  # type: ignore[attr-defined]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80, pattern=r"^[^,\n]+$")]


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["add", "remove", "replace"] = Field(description="add a tag, remove one, or replace one with another")
    region: Region = Field(description="the part of the picture the tag is about")
    tag: Tag = Field(description="add: the new tag; remove and replace: the tag of the prompt it applies to")
    replacement: Tag | None = Field(None, description="replace only: the tag that takes its place")
    reason: str = Field("", max_length=200, description="a few words: which part of the feedback this follows")

    @model_validator(mode="after")
    def _replacement_only_with_replace(self) -> "Change":
        if self.op == "replace" and self.replacement is None:
            raise ValueError("a replace change needs a replacement")
        if self.op != "replace" and self.replacement is not None:
            raise ValueError(f"an {self.op} change takes no replacement")
        return self


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
