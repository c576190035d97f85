"""The chapter's generation log (`output/ch-01/generation-log.json`): our typed entry, and the log as found.

Entries we write are `GenerationLogEntry` (unknown fields forbidden). Entries already in the log,
including the older pipeline's with fields we do not know, are kept as parsed JSON and written back
unchanged in meaning. A log we cannot parse is never rewritten: `read_log` raises `LogInvalid`.
Writing the file (atomically, under the chapter lock) is `pipeline_stage.outputs`' job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from pipeline_stage.errors import LogInvalid
from pipeline_stage.layout import Page, page_of, version_of
from sidecar.likeness.wire import Likeness
from sidecar.assist.provenance import RefinedFrom


class LoggedLora(BaseModel):
    """One LoRA of an entry's stack, as the daemon applied it (its job's `params.loras`)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    strength: float | None = None
    file: str | None = None
    sha256: str | None = None  # null where the daemon did not have the file to hash


class GenerationLogEntry(BaseModel):
    """One generated image. The first seven fields are the pipeline's existing ones (`model` holds the
    checkpoint name); the rest say exactly how the image was made. Paths are relative to the project root."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    image_file: str
    prompt_file: str | None
    prompt_hash: str
    model: str | None
    timestamp: str
    version: int
    approved: bool = False
    seed: int | None
    sampler: str | None
    scheduler: str | None
    steps: int | None
    cfg: float | None
    lora_id: str | None
    lora_strength: float | None
    controlnet_strength: float | None
    workflow_template: str | None
    job_id: str
    engine: str | None
    device: str | None
    duration_ms: int | None
    workflow_file: str
    width: int | None
    height: int | None
    reproduced_from: str | None = None
    pose_image: str | None = None  # the ControlNet pose image, so `--reproduce` can load it again
    backend: str | None = None  # the daemon's backend that rendered it (several backends: `where`)
    draft_of: str | None = None  # --from-draft: the draft (output/ch-XX/drafts/...) this version finishes
    init_image: str | None = None  # --more-like: the image img2img started from (a version of the page)
    denoise: float | None = None  # with init_image: how much of it was redrawn
    group_id: str | None = None  # --variations: the daemon's group of the versions made together
    refined_from: RefinedFrom | None = None  # `--refine`: original prompt, feedback, model + digest
    upscale_model: str | None = None  # `--upscale`: the model of models/upscale_models/ that made the print
    print_file: str | None = None  # `--upscale`: output/ch-XX/print/<image name>, the upscaled image
    # The daemon's likeness judge on the image (score, verdict, scorer, weights' hash), when its project has
    # a reference set and the weights: what the chapter's drift report reads.
    likeness: Likeness | None = None
    approval_changes: list[dict[str, Any]] | None = None  # each approve/unapprove: {approved, by, at}
    family: str | None = None  # the checkpoint's family (sd15, sdxl, flux), as the daemon read it
    # Every LoRA in the order applied: id, strength, file and SHA-256 (where the daemon has the file).
    loras: list[LoggedLora] | None = None

    def to_json(self) -> dict[str, Any]:
        # `approvalChanges` appears once an approval changes (set_approval), not as null in every entry.
        return self.model_dump(by_alias=True, mode="json",
                               exclude={"approval_changes"} if self.approval_changes is None else None)


def prompt_hash(text: str) -> str:
    """The log's `promptHash`: sha256 of the prompt text as submitted."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def timestamp_now() -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as JavaScript's toISOString writes it."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass
class GenerationLog:
    """The log as found: `document` is the parsed JSON (a list of entries, or an object with an
    `entries` list whose other keys are kept); `entries` is that list."""

    path: Path
    document: list[Any] | dict[str, Any] = field(default_factory=list)
    exists: bool = False

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.document["entries"] if isinstance(self.document, dict) else self.document

    def serialize(self) -> bytes:
        return (json.dumps(self.document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def read_log(path: Path) -> GenerationLog:
    if not path.exists():
        return GenerationLog(path)

    def invalid(why: str, **details: Any) -> LogInvalid:
        return LogInvalid(
            f"The generation log {path} {why}. It was left untouched and nothing was generated; "
            "restore it (or move it aside) and run again.",
            {"file": str(path), **details},
        )

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise invalid(f"cannot be read ({exc.strerror})") from None
    if not raw.strip():
        raise invalid("is empty (a torn write?)")
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise invalid(f"is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise invalid(f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                      line=exc.lineno, column=exc.colno) from None
    if isinstance(document, dict):
        if not isinstance(document.get("entries"), list):
            raise invalid("is a JSON object without an `entries` list")
        entries = document["entries"]
    elif isinstance(document, list):
        entries = document
    else:
        raise invalid("is neither a list of entries nor an object with `entries`")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise invalid(f"has an entry that is not an object (entry {i})", entry=i)
    return GenerationLog(path, document, exists=True)


def entry_file_name(entry: dict[str, Any]) -> str | None:
    """The base name of an entry's `imageFile`, whatever path style the writer used."""
    image = entry.get("imageFile")
    if not isinstance(image, str) or not image:
        return None
    return PureWindowsPath(image).name if "\\" in image else PurePosixPath(image).name


def chapter_entries(log: GenerationLog, chapter: int) -> Iterator[tuple[dict[str, Any], Page, int]]:
    """Each entry of the log that names a version of this chapter's pages, with that page and version."""
    for entry in log.entries:
        name = entry_file_name(entry)
        found = page_of(name) if name else None
        if found is not None and found[0].chapter == chapter:
            yield entry, found[0], found[1]


def versions_in(log: GenerationLog, page: Page) -> list[int]:
    versions = []
    for entry in log.entries:
        name = entry_file_name(entry)
        version = version_of(name, page) if name else None
        if version is not None:
            versions.append(version)
    return versions


def find_entries(log: GenerationLog, page: Page, version: int) -> list[dict[str, Any]]:
    target = page.image_name(version)
    return [e for e in log.entries if entry_file_name(e) == target]


def set_approval(log: GenerationLog, page: Page, version: int, approved: bool, by: str) -> dict[str, Any]:
    """Approve (or unapprove) that version of the page; LookupError when the log has none.

    A page has at most one approved version: approving one unapproves any other. Each entry whose
    `approved` changes gets a line in its `approvalChanges` (`{"approved", "by", "at"}`: who changed it,
    `generate` or the daemon's client, and when), so the log says how the page's pick moved."""
    found = find_entries(log, page, version)
    if not found:
        raise LookupError(page.image_name(version))
    at = timestamp_now()

    def change(entry: dict[str, Any], value: bool) -> None:
        if bool(entry.get("approved")) == value:
            return
        entry["approved"] = value
        changes = entry.get("approvalChanges")
        entry["approvalChanges"] = [*(changes if isinstance(changes, list) else []),
                                    {"approved": value, "by": by, "at": at}]

    if approved:
        for entry in log.entries:
            name = entry_file_name(entry)
            if name and version_of(name, page) not in (None, version):
                change(entry, False)
    for entry in found:
        change(entry, approved)
    return found[-1]


def approve(log: GenerationLog, page: Page, version: int, by: str = "generate") -> dict[str, Any]:
    """Mark the entry for that version approved (and no other of the page); LookupError when the log has none."""
    return set_approval(log, page, version, True, by)
