"""Refining a page in the studio's Pages view: which prompt file and which version's image a refinement of
a page means, and writing a refined prompt as the page's prompt (what `generate --refine --write` does)
once the artist has seen its diff.

The refinement itself is `sidecar.assist.service.refine_ask`, the one `sidecar prompt refine` and
`POST /prompt/refine` run. The write takes the refined text the artist saw, not a second answer of the
model, and only over the text it was refined from: a prompt file edited since is left alone
(`prompt_file_changed`). The front matter stays byte for byte (`sidecar.assist.promptfile`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline_stage.layout import Page, Project
from sidecar.assist.promptfile import FENCE, read_prompt_file, rewrite
from sidecar.errors import InvalidField, NotFound, PromptFileChanged
from sidecar.studio.project import find_version


def page_prompt_file(root: Path, page: Page) -> Path:
    path = Project(root).prompt_file(page)
    if not path.is_file():
        raise NotFound(f"{page.stem} has no prompt file ({Project(root).relative(path)}): nothing to refine.",
                       {"chapter": page.chapter, "page": page.page})
    return path


def version_image(root: Path, page: Page, version: int) -> Path:
    found = find_version(root, page, version)
    if not found.image.is_file():
        raise NotFound(f"{found.image.name} is in the log but no longer on disk.", {"file": found.image.name})
    return found.image


def write_prompt(root: Path, page: Page, prompt: str, expected: str) -> None:
    """`prompt` as the page's prompt text, if the file still holds `expected` (the text refined)."""
    text = prompt.strip()
    if not text:
        raise InvalidField("prompt is empty.", {"field": "prompt"})
    if any(line.strip() == FENCE for line in text.splitlines()):  # it would read back as front matter
        raise InvalidField(f"prompt has a {FENCE} line: that fences the front matter, not a prompt.",
                           {"field": "prompt"})
    current = read_prompt_file(page_prompt_file(root, page))
    if current.text != expected.strip():
        raise PromptFileChanged(f"{current.path.name} changed since it was refined; nothing was written. Refine "
                                "again.", {"file": str(current.path)})
    if current.text != text:
        rewrite(current, text)
