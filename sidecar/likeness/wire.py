"""A likeness as it is answered and recorded (the API's job answers, the generation log's entries, drafts'
and sweeps' indexes): one typed shape, in a leaf every layer may import, so the page library below the
job runner records exactly what the API answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Likeness(BaseModel):
    """Is the image the character: its score against the project's reference set (character.toml
    `references`), higher = more alike (0.5 is the same-character tolerance, 1 a reference itself)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    score: float = Field(description="0..1, higher = more alike; >= 0.5 is the same character")
    verdict: Literal["same", "unsure", "different"]
    scorer: str = Field(description="the likeness model (e.g. ccip-caformer-24-randaug-pruned)")
    weights: str = Field(description="the first 16 hex digits of its weights' sha256: what scored it")
