"""A page's task: the `POST /jobs` body `generate` sends for one page, and what its log entry records
about where the render came from (sent as the job's `page`: the daemon writes the version and its
entry, `sidecar.jobs.pages`). Types only: no daemon client, no options, no output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_stage.layout import Page
from sidecar.api.models import JobRequest
from sidecar.jobs.pageref import PageRef


@dataclass(frozen=True)
class PageTask:
    page: Page
    request: JobRequest  # the POST /jobs body
    prompt_file: str | None  # as the log records it (relative to the root)
    reproduced_from: str | None = None  # the .workflow.json resubmitted, relative to the root
    template_hint: str | None = None  # for a resubmitted workflow: the template its source was filled from
    draft_of: str | None = None  # --from-draft: the draft's image, relative to the root
    init_image: str | None = None  # --more-like (or its --reproduce): the version img2img starts from
    refine: dict[str, Any] | None = None  # `--refine`: the daemon's refinement answer (POST /prompt/refine)
    draft_checkpoint: str | None = None  # `--drafts --draft-checkpoint X`: the drafts' checkpoint, not the page's
    # `--reproduce`: each LoRA file's SHA-256 as the source version's log entry recorded it (checked before submit)
    lora_hashes: tuple[tuple[str, str], ...] = ()
    reproduces: str | None = None  # `--reproduce`: the source version's image, for the messages

    def page_ref(self, root: Path) -> PageRef:
        """The job's `page`: this page of the project at `root`, and the provenance its log entry records."""
        return PageRef(chapter=self.page.chapter, page=self.page.page, project=str(root),
                       prompt_file=self.prompt_file, reproduced_from=self.reproduced_from,
                       workflow_template=self.template_hint, draft_of=self.draft_of, init_image=self.init_image)

    def page_request(self, root: Path) -> JobRequest:
        """The request with its `page` and `source`: the daemon writes the version when the job succeeds."""
        return self.request.model_copy(update={"page": self.page_ref(root), "source": "generate"})
