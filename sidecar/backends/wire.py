"""The wire form of a rented backend (GET /backends, /health's backends, the studio): pydantic, camelCase,
unknown fields refused, like the rest of the API's answers (`sidecar.api.responses` uses it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class RentalSummary(BaseModel):
    """A ComfyUI rented on vast.ai: its machine, what it cost so far and the guards that destroy it."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    name: str
    provider: str
    state: str = Field(description="searching, creating, starting, serving (in routing), destroying, destroyed, "
                                   "failed (renting stopped; any instance destroyed) or destroy_failed (the reaper "
                                   "tries again at the next start)")
    instance_id: str | None
    gpu: str | None
    offer: str | None = Field(description="the offer rented, described")
    price_per_hour: float = Field(description="$ per hour, all included (vast.ai's dph_total)")
    cost: float = Field(description="$ so far (final once destroyed)")
    max_total_cost: float | None = Field(description="destroyed when cost reaches this ($)")
    max_hours: float | None = Field(description="destroyed after this many hours rented")
    idle_minutes: float = Field(description="destroyed after this many minutes without a job")
    idle_seconds: float | None = Field(description="seconds since its last job (while serving)")
    message: str | None = Field(description="why it was released, or what it is waiting for")
