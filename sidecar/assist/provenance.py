"""`refinedFrom`: how a refined prompt came to be, recorded on the job and in the generation log entry
so a refined page can be understood and reproduced later (the same feedback, the same model digest).
A leaf model: the job parameters (`sidecar.jobs.params`) and the pipeline's log entry both hold it."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel
from sidecar.whole_numbers import WholeNumbers

Text = Annotated[str, Field(max_length=4000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Digest = Annotated[str, Field(max_length=200)]


class RefinedFrom(WholeNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, alias_generator=to_camel,
                              populate_by_name=True)

    original_prompt: Text = Field(description="the prompt before refinement")
    feedback: Annotated[str, Field(min_length=1, max_length=2000)] = Field(description="the artist's feedback")
    refined_prompt: Text = Field(description="the prompt refinement produced (what the job renders)")
    model: Name = Field(description="the Ollama model that proposed the changes")
    model_digest: Digest | None = Field(None, description="its digest as Ollama listed it")
    vision_model: Name | None = Field(None, description="the vision model that looked at the picked image (--look)")
    vision_model_digest: Digest | None = None
    look_image: Annotated[str, Field(max_length=4096)] | None = Field(None, description="the image it looked at")
