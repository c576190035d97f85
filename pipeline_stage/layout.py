"""Where a page's files live in a project, and how they are named (the pipeline's existing convention).

`prompts/ch-01/ch01_p001.txt` in, `output/ch-01/raw/ch01_p001_v1.png` (+ `.workflow.json`) and
`output/ch-01/generation-log.json` out. Pure naming: nothing here touches the disk except `list_pages`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline_stage.errors import InputError

# Versioned outputs of a page: ch01_p001_v3.png, ch01_p001_v3.workflow.json, ...
VERSIONED = re.compile(r"^ch(\d+)_p(\d+)_v(\d+)(?:\.|$)")
PROMPT_FILE = re.compile(r"^ch(\d+)_p(\d+)\.txt$")


@dataclass(frozen=True, order=True)
class Page:
    chapter: int
    page: int

    @property
    def stem(self) -> str:
        return f"ch{self.chapter:02d}_p{self.page:03d}"

    @property
    def chapter_dir(self) -> str:
        return f"ch-{self.chapter:02d}"

    def image_name(self, version: int) -> str:
        return f"{self.stem}_v{version}.png"

    def workflow_name(self, version: int) -> str:
        return f"{self.stem}_v{version}.workflow.json"

    def __str__(self) -> str:
        return self.stem


@dataclass(frozen=True)
class Project:
    root: Path

    def prompt_file(self, page: Page) -> Path:
        return self.root / "prompts" / page.chapter_dir / f"{page.stem}.txt"

    def chapter_output(self, chapter: int) -> Path:
        return self.root / "output" / Page(chapter, 0).chapter_dir

    def raw_dir(self, chapter: int) -> Path:
        return self.chapter_output(chapter) / "raw"

    def log_file(self, chapter: int) -> Path:
        return self.chapter_output(chapter) / "generation-log.json"

    def print_dir(self, chapter: int) -> Path:
        # The print upscales (`--upscale`): never in raw/, whose files the overlay stage takes as pages.
        return self.chapter_output(chapter) / "print"

    def consistency_dir(self, chapter: int) -> Path:
        # Not under raw/: the overlay stage takes every PNG it finds there.
        return self.chapter_output(chapter) / "consistency"

    def preview_file(self) -> Path:
        # The page being rendered, as the daemon's live previews show it: one file, overwritten; never in raw/.
        return self.root / "output" / "preview.jpg"

    def config_file(self) -> Path:
        return self.root / "pipeline.toml"

    def relative(self, path: Path) -> str:
        """A path as the log records it: relative to the project root, with forward slashes."""
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def list_pages(self, chapter: int) -> list[Page]:
        folder = self.root / "prompts" / Page(chapter, 0).chapter_dir
        pages = []
        for path in folder.glob("*.txt") if folder.is_dir() else ():
            m = PROMPT_FILE.match(path.name)
            if m and int(m.group(1)) == chapter:
                pages.append(Page(chapter, int(m.group(2))))
        return sorted(pages)


def version_of(name: str, page: Page) -> int | None:
    """The version in a versioned file name of this page (any extension), else None."""
    m = VERSIONED.match(Path(name).name)
    if m and int(m.group(1)) == page.chapter and int(m.group(2)) == page.page:
        return int(m.group(3))
    return None


def page_of(name: str) -> tuple[Page, int] | None:
    """The page and version a versioned file name belongs to (`ch01_p001_v1.workflow.json`)."""
    m = VERSIONED.match(Path(name).name)
    return (Page(int(m.group(1)), int(m.group(2))), int(m.group(3))) if m else None


def parse_pages(spec: str) -> list[int]:
    """`1-4,7` -> [1, 2, 3, 4, 7] (sorted, no duplicates)."""
    pages: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"--pages takes page numbers and ranges like 1-4,7; {part!r} is neither.",
                             {"pages": spec})
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo < 1 or hi < lo:
            raise InputError(f"--pages range {part!r} is empty or starts below 1.", {"pages": spec})
        pages.update(range(lo, hi + 1))
    return sorted(pages)
