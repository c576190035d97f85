"""The chapter's likeness report (`generate consistency -c 1`): does every page's approved version still
draw the character? Reads each page's approved version from the chapter's generation log, with the
`likeness` its entry recorded (the daemon's judge, when its project has a reference set); versions logged
without one are scored by the daemon now when it can (`POST /likeness/score`), else listed as unscored.

A page drifts when its approved version is judged `different`, or scores far below the chapter's median
(DRIFT_MARGIN under it: a page the judge still calls `same` but that is visibly less her than the rest).
Written to `output/ch-XX/consistency/likeness.json`, beside the `--repeat` reports.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_stage.genlog import chapter_entries, read_log
from pipeline_stage.layout import Project
from pipeline_stage.outputs import write_atomic

DRIFT_MARGIN = 0.15  # score points under the chapter's median (scores are 0..1, 0.5 = the tolerance)
REPORT = "likeness.json"


@dataclass
class PageLikeness:
    page: str
    version: int
    image: str
    likeness: dict[str, Any] | None
    drift: str | None = None  # why it is flagged


@dataclass
class DriftReport:
    chapter: int
    pages: list[PageLikeness]
    median: float | None
    unapproved: list[str] = field(default_factory=list)
    unscored_why: str | None = None

    @property
    def drifting(self) -> list[PageLikeness]:
        return [p for p in self.pages if p.drift]

    @property
    def unscored(self) -> list[PageLikeness]:
        return [p for p in self.pages if p.likeness is None]

    def to_json(self) -> dict[str, Any]:
        return {"chapter": self.chapter, "median": self.median, "margin": DRIFT_MARGIN,
                "drift": [p.page for p in self.drifting], "unscored": [p.page for p in self.unscored],
                "unscoredWhy": self.unscored_why, "unapproved": self.unapproved,
                "pages": [{"page": p.page, "version": p.version, "image": p.image, "likeness": p.likeness,
                           "drift": p.drift} for p in self.pages]}


def approved_versions(project: Project, chapter: int) -> tuple[list[PageLikeness], list[str]]:
    """Each page's newest approved version (and the pages with none approved)."""
    log = read_log(project.log_file(chapter))
    newest: dict[str, PageLikeness] = {}
    seen: set[str] = set()
    for entry, page, version in chapter_entries(log, chapter):
        seen.add(page.stem)
        if not entry.get("approved"):
            continue
        if page.stem not in newest or version > newest[page.stem].version:
            newest[page.stem] = PageLikeness(page.stem, version, entry["imageFile"],
                                              entry.get("likeness"))
    return [newest[k] for k in sorted(newest)], sorted(seen - set(newest))


def flag(pages: list[PageLikeness]) -> float | None:
    """Mark the drifting pages; answers the chapter's median score."""
    scores = [p.likeness["score"] for p in pages if p.likeness]
    if not scores:
        return None
    median = statistics.median(scores)
    for p in pages:
        if p.likeness is None:
            continue
        if p.likeness["verdict"] == "different":
            p.drift = f"judged different ({p.likeness['score']:.2f})"
        elif p.likeness["score"] < median - DRIFT_MARGIN:
            p.drift = f"{p.likeness['score']:.2f}, far below the chapter's median {median:.2f}"
    return round(median, 4)


def write(project: Project, report: DriftReport) -> Path:
    path = project.consistency_dir(report.chapter) / REPORT
    write_atomic(path, (json.dumps(report.to_json(), indent=2) + "\n").encode())
    return path


def lines(report: DriftReport, project: Project, path: Path) -> list[str]:
    out = []
    median = f"median likeness {report.median:.2f}" if report.median is not None else "no likeness scores"
    out.append(f"chapter {report.chapter}: {len(report.pages)} approved page(s), {median}; report "
               f"{project.relative(path)}")
    for p in report.pages:
        lk = f"{p.likeness['score']:.2f} {p.likeness['verdict']}" if p.likeness else "not scored"
        out.append(f"  {p.page} v{p.version}: {lk}" + (f"  DRIFT: {p.drift}" if p.drift else ""))
    if report.drifting:
        out.append(f"drift: {', '.join(p.page for p in report.drifting)}")
    if report.unscored and report.unscored_why:
        out.append(f"not scored: {report.unscored_why}")
    if report.unapproved:
        out.append(f"no approved version: {', '.join(report.unapproved)}")
    return out


def image_path(project: Project, page: PageLikeness) -> Path:
    return (project.root / page.image).resolve()
