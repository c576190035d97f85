"""The intent document of a concept (`concepts/NAME.intent.json`): every round (the fields it rendered,
its prompt, its jobs), the artist's feedback on it (picks, rejections with their reasons, words) and what
the interpreter changed; the preferences drawn from them ("rejected: busy backgrounds" x3), fed to the
interpreter each round and shown to the artist, who may add notes and dismiss a preference
(`PUT /concepts/{name}/intent`). Rounds are the history: only `notes` and `dismissed` are the artist's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints, ValidationError

from sidecar.atomic import write_text
from sidecar.concepts.fields import ConceptFields, RenderSettings, Wire
from sidecar.concepts.store import intent_file
from sidecar.errors import ConceptInvalid

MAX_BYTES = 8 * 1024 * 1024
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200, pattern=r"^[^\n\r]*$")]


class Reject(Wire):
    job_id: JobId
    reason: Reason = Field("", description="a word or a few on why ('' : none given)")


class FieldChangeRecord(Wire):
    field: str
    old: str
    new: str
    reason: str = ""
    status: str
    note: str = ""


class RoundFeedback(Wire):
    picks: list[JobId] = Field(default_factory=list)
    rejects: list[Reject] = Field(default_factory=list)
    text: str = ""
    observations: list[str] | None = None
    changes: list[FieldChangeRecord] = Field(default_factory=list)
    summary: str = ""
    interpreter: str | None = Field(None, description="the Ollama model that read it (null: none answered)")
    at: str


class Round(Wire):
    round: int = Field(ge=1)
    group_id: str
    jobs: list[str]
    seeds: list[int] = Field(default_factory=list)
    fields: ConceptFields
    render: RenderSettings = Field(default_factory=RenderSettings)
    prompt: str
    negative: str
    composer: str = Field(description="`ollama` (the prompt engineer composed it) or `fields` (as written)")
    family: str | None = None
    started_at: str
    feedback: RoundFeedback | None = None


class Preference(Wire):
    text: str = Field(description="what the artist showed: `rejected: busy backgrounds`, `asked: ...`")
    count: int = Field(description="in how many feedbacks it came up")


class Intent(Wire):
    rounds: list[Round] = Field(default_factory=list)
    notes: list[Note] = Field(default_factory=list, max_length=100, description="the artist's own notes, fed "
                                                                                 "to the interpreter")
    dismissed: list[Note] = Field(default_factory=list, max_length=100,
                                  description="preferences the artist struck out: no longer fed to it")

    def preferences(self) -> list[Preference]:
        """Drawn from the feedback: each rejection reason and each thing said, counted over the rounds,
        most frequent first; the dismissed left out."""
        counts: Counter[str] = Counter()
        for r in self.rounds:
            if r.feedback is None:
                continue
            seen = set()
            for reject in r.feedback.rejects:
                if reject.reason and f"rejected: {reject.reason.lower()}" not in seen:
                    seen.add(f"rejected: {reject.reason.lower()}")
            if r.feedback.text:
                seen.add(f"asked: {r.feedback.text.strip()}")
            counts.update(seen)
        gone = {d.lower() for d in self.dismissed}
        return [Preference(text=t, count=c) for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if t.lower() not in gone]

    def fed(self) -> list[str]:
        """What the interpreter (and the prompt engineer) read: the preferences, then the artist's notes."""
        return [f"{p.text} (x{p.count})" if p.count > 1 else p.text for p in self.preferences()] + list(self.notes)


def read(root: Path, name: str) -> Intent:
    path = intent_file(root, name)
    if not path.is_file():
        return Intent()
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConceptInvalid(f"concepts/{name}.intent.json is over {MAX_BYTES} bytes.", {"name": name})
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return Intent.model_validate(data)
    except RecursionError:  # json recurses per nesting level: a hand-made `[[[[...` within the size limit
        raise ConceptInvalid(f"concepts/{name}.intent.json nests too deeply to be an intent document; it is left "
                             "as it is. Move it aside to start the concept's intent afresh.", {"name": name}) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        else:
            problems = str(exc)[:200]
        raise ConceptInvalid(f"concepts/{name}.intent.json cannot be read ({problems}); it is left as it is. "
                             "Move it aside to start the concept's intent afresh.", {"name": name}) from None


def write(root: Path, name: str, intent: Intent) -> None:
    write_text(intent_file(root, name), intent.model_dump_json(by_alias=True, indent=2) + "\n")
