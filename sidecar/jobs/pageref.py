"""A job that renders a page of the artist's pipeline project (`"page": {"chapter", "page"}` on POST
/jobs), and the version the daemon wrote for it (`pageVersion`).

The reference is stored with the job, so a daemon restarted mid-render still knows where the version
goes. Besides the page it carries what the generation log records about where a render came from
(the prompt file, a reproduced workflow, a draft, an init image): `generate` sends those it knows; the
daemon fills the prompt file itself. Writing the version is `sidecar.jobs.pages`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sidecar.whole_numbers import WholeNumbers

ProjectPath = Annotated[str, Field(min_length=1, max_length=4096)]
LoggedPath = Annotated[str, Field(min_length=1, max_length=4096)]

MAX_CHAPTER = 999
MAX_PAGE = 9999


class PageRef(WholeNumbers):
    """Which page a job renders, in which project, and the provenance its log entry records."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, alias_generator=to_camel,
                              populate_by_name=True)

    chapter: int = Field(ge=1, le=MAX_CHAPTER, description="the chapter (`ch-01` is 1)")
    page: int = Field(ge=1, le=MAX_PAGE, description="the page of the chapter (`ch01_p003` is 3)")
    project: ProjectPath | None = Field(
        None, description="absolute path of the pipeline project (a folder with `prompts/` or pipeline.toml) on "
                          "the daemon's machine; default: the daemon's project (`sidecar serve --project`, "
                          "setting project_root)")
    prompt_file: LoggedPath | None = Field(
        None, description="the log's `promptFile` (relative to the project); default: the page's prompt file "
                          "when the request leaves the prompt to it")
    reproduced_from: LoggedPath | None = Field(None, description="the log's `reproducedFrom`: the .workflow.json "
                                                                 "resubmitted")
    workflow_template: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="for a whole workflow: the template its source was filled from (the log's "
                          "`workflowTemplate`)")
    draft_of: LoggedPath | None = Field(None, description="the log's `draftOf`: the draft finished as this version")
    init_image: LoggedPath | None = Field(None, description="the log's `initImage`: the version img2img started "
                                                            "from (relative to the project)")


class PageVersion(BaseModel):
    """The version a page job became, once its files and log entry are written."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    chapter: int
    page: int
    version: int
    file: str = Field(description="the image, relative to the project (output/ch-XX/raw/chXX_pNNN_vN.png)")
