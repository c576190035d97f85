"""The one check that keeps the daemon's reads and writes of a pipeline project inside it: every path is
resolved (symlinks followed) and must stay under the project root. A log entry's `workflowFile` naming
`/etc/...` or `../..`, a PNG in `raw/` linked to elsewhere, a `raw/` folder or a log that is such a link:
refused (`project_path_outside`), never read, served or written through. Used by the studio's project
routes (`sidecar.studio.project`) and by the one writer of versions (`sidecar.jobs.pages`)."""

from __future__ import annotations

from pathlib import Path

from pipeline_stage.layout import Project
from pipeline_stage.outputs import JOURNAL_NAME
from sidecar.errors import ProjectPathOutside


def inside(root: Path, path: Path) -> Path:
    """`path` with every symlink resolved, if it stays within the project `root` (itself resolved); else
    ProjectPathOutside. The one check for every project path the daemon reads, serves or writes."""
    base = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(base):
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        raise ProjectPathOutside(f"{shown} leads out of the project ({real}); the daemon reads and writes only "
                                 "files inside the project root. Replace the link or the log entry's path.",
                                 {"path": shown})
    return real


def is_inside(root: Path, path: Path) -> bool:
    try:
        inside(root, path)
    except ProjectPathOutside:
        return False
    return True


def writable_chapter(project: Project, chapter: int) -> None:
    """Refuse before writing anything when a folder or file a write of this chapter goes through (its output
    folder, raw/, print/, the log, the journal) leads out of the project."""
    for path in (project.chapter_output(chapter), project.raw_dir(chapter), project.print_dir(chapter),
                 project.log_file(chapter), project.raw_dir(chapter) / JOURNAL_NAME):
        inside(project.root, path)

