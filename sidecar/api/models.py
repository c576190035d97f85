"""Pydantic models of the generation API's request bodies (responses: `responses.py`; the OpenAPI
document is built from both).

camelCase on the wire, as in the pipeline's own types; unknown fields are refused. These are the
edge: a request becomes a typed `JobRequest` here once and nothing downstream re-checks a raw dict.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.jobs.params import GenerationRequest


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class JobRequest(GenerationRequest):
    """POST /jobs. Either the parameters (a template is chosen and slot-filled) or a whole `workflow`.
    The fields, their limits and their strict types are the domain's (`sidecar.jobs.params`); this
    adds only the camelCase names of the wire. The document says what `{}` is refused for: a
    `prompt` or a `workflow` is required."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, json_schema_extra={
        "anyOf": [{"required": ["prompt"]}, {"required": ["workflow"]}]})


class GcRequest(Wire):
    """POST /gc. Without keepDays, the daemon's keep_days setting (0 there: nothing is removed).
    Strict: `"keepDays": false` is not 0 (which would remove every finished job; found by the fuzzer)."""

    model_config = ConfigDict(strict=True)

    dry_run: bool = Field(False, description="only report what would be removed and its size")
    keep_days: int | None = Field(None, ge=0, le=36500,
                                  description="remove finished jobs that ended more than this many days ago "
                                              "(0: every finished job)")
