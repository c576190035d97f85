"""Pydantic models of the generation API's request bodies (responses: `responses.py`; the OpenAPI
document is built from both).

camelCase on the wire, as in the pipeline's own types; unknown fields are refused. These are the
edge: a request becomes a typed `JobRequest` here once and nothing downstream re-checks a raw dict.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.jobs.pageref import PageRef
from sidecar.jobs.params import IMAGE_FIELDS, GenerationRequest, PathText, Prompt
from sidecar.jobs.variations import MAX_VARIATIONS
from sidecar.whole_numbers import WholeNumbers

SOURCE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
Source = Annotated[str, Field(pattern=SOURCE_PATTERN)]


class Wire(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


def _job_request_rules(schema: dict[str, Any]) -> None:
    """What the builder refuses beyond each field's own limits, said in the document: a `prompt`, a
    `workflow` or a `page` is required; a whole workflow takes no parameter fields (its images aside) and no
    `variations` (they vary a template job's seed; a workflow fixes its own)."""
    present = {"prompt": {"type": "string"}, "workflow": {"type": "object"}, "page": {"type": "object"}}
    params = [to_camel(name) for name in GenerationRequest.model_fields
              if name not in ("workflow", "batch_size", "where", "upscale_model", *IMAGE_FIELDS)]
    schema["anyOf"] = [{"required": [name], "properties": {name: kind}} for name, kind in present.items()]
    schema["if"] = {"required": ["workflow"], "properties": {"workflow": present["workflow"]}}
    schema["then"] = {"properties": {name: {"type": "null"} for name in [*params, "variations"]}}


class JobRequest(GenerationRequest):
    """POST /jobs. Either the parameters (a template is chosen and slot-filled) or a whole `workflow`.
    The fields, their limits and their strict types are the domain's (`sidecar.jobs.params`); this
    adds only the camelCase names of the wire. The document says what `{}` is refused for: a
    `prompt`, a `workflow` or a `page` (whose prompt file gives the prompt) is required."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              json_schema_extra=lambda schema, cls: _job_request_rules(schema))

    # How the submit is queued, not what the job renders (left out of `generation()`).
    variations: int | None = Field(None, ge=1, le=MAX_VARIATIONS, description=(
        "queue this many ordinary jobs (batch size 1 each) with the seeds seed, seed+1, ... (a random first "
        "seed when none is given) under one groupId; the answer is the group"))
    front: bool | None = Field(None, description="true: put the job (or the group, in its order) at the head of "
                                                "the queue")
    # Who asked, and where the result goes (also not what the job renders).
    source: Source | None = Field(None, description=(
        "who submits it: `studio`, `generate`, `grid`, `sweep`, ... (`api` when absent); GET /jobs?source= "
        "lists one source's jobs"))
    page: PageRef | None = Field(None, description=(
        "render a page of the pipeline project: when the job succeeds the daemon writes it as the page's next "
        "version (image and workflow in output/ch-XX/raw/, the generation-log entry; all or nothing) and the job "
        "answers `pageVersion`. Without `prompt` (and `workflow`), the page's prompt file, its front matter and "
        "pipeline.toml fill every field the request leaves out, as `generate` does"))

    def parameter_fields(self) -> list[str]:
        return [f for f in super().parameter_fields() if f not in ("variations", "front", "source", "page")]

    def generation(self) -> GenerationRequest:
        """The job's request alone, without the queueing options."""
        return GenerationRequest.model_validate(
            {name: getattr(self, name) for name in GenerationRequest.model_fields if name in self.model_fields_set})


class GcRequest(Wire):
    """POST /gc. Without keepDays, the daemon's keep_days setting (0 there: nothing is removed).
    Strict: `"keepDays": false` is not 0 (which would remove every finished job; found by the fuzzer)."""

    model_config = ConfigDict(strict=True)

    dry_run: bool = Field(False, description="only report what would be removed and its size")
    keep_days: int | None = Field(None, ge=0, le=36500,
                                  description="remove finished jobs that ended more than this many days ago "
                                              "(0: every finished job)")


class RefineRequest(Wire):
    """POST /prompt/refine: a prompt (or a page's prompt file) and the artist's feedback. The character
    (trigger, locked traits) comes from the character.toml nearest the prompt file (else trigger_word)."""

    model_config = ConfigDict(strict=True, json_schema_extra={
        "anyOf": [{"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                  {"required": ["promptFile"], "properties": {"promptFile": {"type": "string"}}}],
        # write rewrites the prompt file: it needs one.
        "if": {"required": ["write"], "properties": {"write": {"const": True}}},
        "then": {"required": ["promptFile"], "properties": {"promptFile": {"type": "string"}}}})

    feedback: str = Field(min_length=1, max_length=2000, description="what to change, in words")
    prompt: Prompt | None = Field(None, description="the prompt text (default: the prompt file's)")
    prompt_file: PathText | None = Field(None, description="absolute path of the page's prompt file (.txt)")
    look_image_path: PathText | None = Field(None, description="absolute path of the picked image: the vision "
                                                               "model looks at it first")
    write: bool = Field(False, description="rewrite the prompt file's text (front matter kept)")


class LikenessRequest(Wire):
    """POST /likeness/score: images (absolute paths inside the project or the data dir) and/or jobs (their
    images), judged against the project's reference set."""

    model_config = ConfigDict(strict=True, json_schema_extra={
        "anyOf": [{"required": ["images"], "properties": {"images": {"minItems": 1}}},
                  {"required": ["jobIds"], "properties": {"jobIds": {"minItems": 1}}}]})

    images: list[PathText] = Field(default_factory=list, max_length=256,
                                   description="absolute paths of PNG, JPEG or WebP images inside the project "
                                               "root or the data dir")
    job_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=256, description="succeeded jobs whose images to score")
    mirrored: bool = Field(False, description="judge each image's mirror (a flipped training image)")
