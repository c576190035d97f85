"""The concept routes' bodies and answers (camelCase on the wire), as `/openapi.json` shows them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from sidecar.concepts.fields import BareName, ConceptFields, LoraStack, RenderSettings, Wire
from sidecar.concepts.intent import Intent, Preference, Reject
from sidecar.api.responses import JobSummary
from sidecar.jobs.params import Pixels, Steps

Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class In(Wire):
    model_config = Wire.model_config | {"strict": True}


class ConceptNew(In):
    name: Name = Field(description="the concept's name: its file is concepts/NAME.toml")
    fields: ConceptFields = Field(default_factory=ConceptFields)
    render: RenderSettings = Field(default_factory=RenderSettings)


class ConceptPut(In):
    fields: ConceptFields
    render: RenderSettings = Field(default_factory=RenderSettings)


class CharacterView(Wire):
    file: str | None = Field(description="the character.toml read (null: none; only trigger_word is kept first)")
    trigger: str
    locked: list[str] = Field(description="traits in every prompt, verbatim, never changed")
    locked_negative: list[str]


class ConceptView(Wire):
    name: str
    file: str = Field(description="concepts/NAME.toml, relative to the project root")
    fields: ConceptFields
    render: RenderSettings
    character: CharacterView
    rounds: int = Field(description="how many rounds were rendered")


class UnreadableConcept(Wire):
    name: str
    code: str = Field(description="`concept_invalid`: the file (or its intent document) cannot be used as it is")
    message: str = Field(description="what is wrong, and where: the file is left as it is for the artist to mend")


class ConceptList(Wire):
    concepts: list[ConceptView]
    unreadable: list[UnreadableConcept] = Field(
        default_factory=list, description="concepts whose file cannot be read (hand-edited into something else): "
                                          "listed apart so the others stay usable; GET /concepts/{name} says why")


class ComposedTagOut(Wire):
    field: str = Field(description="the field it renders, or `character`")
    tag: str
    source: str = Field(description="`character` and `locked`: verbatim; `model`: the prompt engineer's; "
                                    "`fields`: the field as written")


class RefusalOut(Wire):
    field: str
    tag: str
    reason: str


class Composed(Wire):
    prompt: str
    negative: str
    tags: list[ComposedTagOut] = Field(description="fields -> tags: every part of the prompt and where it came from")
    style: str = Field(description="`tags` (SD 1.5, SDXL) or `sentence` (Flux)")
    family: str | None
    composer: str = Field(description="`ollama`: the prompt engineer composed it; `fields`: the fields as written")
    model: str | None = None
    refused: list[RefusalOut] = Field(default_factory=list, description="what the model proposed that code refused")
    message: str | None = Field(None, description="why the prompt engineer did not compose (Ollama absent, ...)")


class ComposeRequest(In):
    checkpoint: BareName | None = Field(None, description="the checkpoint whose family picks the prompt style "
                                                           "(default: the concept's render, then the daemon's)")


class RoundRequest(In):
    """What this round renders with, over the concept's `render` (which it then keeps)."""

    checkpoint: BareName | None = None
    loras: LoraStack = Field(None, max_length=3, description="at most 3 (every profile's max_loras), each once")
    steps: Steps | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    seed: int | None = Field(None, ge=0, le=2**64 - 4,
                             description="the first of the four seeds (seed, seed+1, ...); random when absent")


class RoundStarted(Wire):
    round: int
    group_id: str
    jobs: list[JobSummary] = Field(description="the four jobs (as GET /groups/{id} lists them)")
    composed: Composed


class FeedbackRequest(In):
    picks: list[JobId] = Field(default_factory=list, max_length=4, description="jobs of the round the artist picked")
    rejects: list[Reject] = Field(default_factory=list, max_length=4, description="jobs rejected, each with an "
                                                                                  "optional reason")
    text: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] = Field(
        "", description="anything else the artist says")
    look: bool = Field(False, description="the vision analyzer describes the first pick first (\"more like this\")")


class ChangeOut(Wire):
    field: str
    old: str
    new: str
    reason: str
    status: str = Field(description="applied; refused (a locked field, a forbidden tag: `note` says which); unchanged")
    note: str = ""


class FeedbackAnswer(Wire):
    round: int
    changes: list[ChangeOut]
    summary: str
    observations: list[str] | None
    fields: ConceptFields = Field(description="the concept's fields for the next round")
    preferences: list[Preference]
    messages: list[str] = Field(description="why a stage did not answer (Ollama absent, no vision model, ...)")


class IntentView(Wire):
    intent: Intent
    preferences: list[Preference] = Field(description="drawn from every round's feedback, the dismissed left out")


class IntentEdit(In):
    notes: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]] = \
        Field(default_factory=list, max_length=100)
    dismissed: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]] = \
        Field(default_factory=list, max_length=100)


class PageRequest(In):
    chapter: int = Field(ge=0, le=999_999)
    page: int = Field(ge=0, le=999_999)
    job_id: JobId = Field(description="a succeeded job of one of the concept's rounds")
    overwrite: bool = Field(False, description="replace the page's prompt file if it exists")


class PageWritten(Wire):
    file: str = Field(description="the prompt file written, relative to the project root")
    content: str
    front_matter: dict[str, Any]
