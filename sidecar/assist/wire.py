"""The answer of a refinement as clients see it: `POST /prompt/refine`, `sidecar prompt refine --json`
and `generate --refine --json` all give this shape (camelCase on the wire)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.assist.provenance import RefinedFrom


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class ChangeOutcome(Out):
    op: Literal["add", "remove", "replace"]
    region: str
    tag: str
    replacement: str | None = None
    reason: str = ""
    status: Literal["applied", "refused", "unchanged"] = Field(
        description="applied; refused (it would break the character's invariants: `note` says which); "
                    "unchanged (nothing to do)")
    note: str = ""


class CharacterInfo(Out):
    file: str | None = Field(description="the character.toml used; null: none found, only trigger_word is kept first")
    trigger: str
    locked: list[str]
    locked_negative: list[str]


class RefineAnswer(Out):
    original: str = Field(description="the prompt text before")
    refined: str = Field(description="the prompt text after (the same when nothing applied)")
    changed: bool
    summary: str = Field(description="the model's one-line summary of the change set")
    changes: list[ChangeOutcome] = Field(description="every change the model proposed and what became of it")
    diff: list[str] = Field(description="one line per tag: '  kept', '- removed', '+ added'")
    observations: list[str] | None = Field(None, description="what the vision model saw in the picked image (look)")
    warnings: list[str] = Field(default_factory=list)
    character: CharacterInfo
    prompt_file: str | None = None
    written: bool = Field(False, description="true when the prompt file was rewritten (write)")
    file_diff: str | None = Field(None, description="unified diff of the prompt file (front matter kept)")
    refined_from: RefinedFrom = Field(description="provenance: send it as the job's refinedFrom")
