"""Publishing a version: the chapter lock, the next version number, and the all-or-nothing commit of
image + workflow + log entry. Existing files are never overwritten.

The three files cannot change in one atomic step, so a commit is journalled: every file is first
written in full to a hidden temp name and fsynced, then a journal naming the moves is written
atomically, then the files are moved into place (log last) and the journal removed. A crash before
the journal leaves only hidden temps; a crash after it is rolled forward by the next run for that
chapter (any `generate` or `generate approve`), which does that before anything else, under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_stage.errors import LogInvalid, StageError
from pipeline_stage.genlog import GenerationLog, entry_file_name, read_log, versions_in
from pipeline_stage.layout import Page, Project, version_of
from sidecar import atomic

LOCK_NAME = ".generate.lock"
JOURNAL_NAME = ".generate-journal.json"
TMP_PREFIX = ".generate-tmp-"


@dataclass(frozen=True)
class Published:
    version: int
    image: Path
    workflow: Path
    log: Path
    entry: dict[str, Any]
    print_image: Path | None = None  # output/ch-XX/print/<the image's name>, with `--upscale`


@contextlib.contextmanager
def chapter_lock(project: Project, chapter: int) -> Iterator[None]:
    """Exclusive for the chapter's raw dir and log, across processes (flock; released if we die)."""
    raw = project.raw_dir(chapter)
    raw.mkdir(parents=True, exist_ok=True)
    fd = os.open(raw / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        recover(project, chapter)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _temp_for(final: Path) -> Path:
    return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{final.name}")


def _place_new(tmp: Path, final: Path) -> None:
    """Move tmp to final, refusing to replace an existing file (link fails with EEXIST)."""
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A filesystem without hard links: we hold the lock, so check-then-rename is safe among us.
        if final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def recover(project: Project, chapter: int) -> None:
    """Roll forward an interrupted commit and drop temps of dead runs. Called with the lock held."""
    base = project.chapter_output(chapter)
    journal = project.raw_dir(chapter) / JOURNAL_NAME
    if journal.exists():
        try:
            moves = json.loads(journal.read_text(encoding="utf-8"))["moves"]
        except (ValueError, KeyError, TypeError):
            raise LogInvalid(f"The commit journal {journal} of an interrupted run is unreadable, so the version "
                             "it was writing cannot be completed. Check that version's files and the log, then "
                             "delete the journal.", {"file": str(journal)}) from None
        for move in moves:
            tmp, final = base / move["tmp"], base / move["final"]
            if not tmp.exists():
                continue  # already moved
            if move["mode"] == "replace":
                os.replace(tmp, final)
            elif final.exists():
                os.unlink(tmp)  # linked before the crash, the temp name not yet removed
            else:
                _place_new(tmp, final)
        for folder in {(base / m["final"]).parent for m in moves}:
            _fsync_dir(folder)
        journal.unlink()
    # Temps are only written under the lock, so any left now belong to a run that died before its journal.
    for folder in (base, project.raw_dir(chapter), project.print_dir(chapter)):
        for leftover in folder.glob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)


def commit(base: Path, journal: Path, files: list[tuple[Path, bytes, str]]) -> None:
    """Write `files` ((final path, bytes, "new"|"replace")) so that they all appear or none do."""
    for final, _, mode in files:
        if mode == "new" and final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final))
    temps: list[Path] = []
    try:
        for final, data, _ in files:
            tmp = _temp_for(final)
            _write_synced(tmp, data)
            temps.append(tmp)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    moves = [{"tmp": tmp.relative_to(base).as_posix(), "final": final.relative_to(base).as_posix(), "mode": mode}
             for tmp, (final, _, mode) in zip(temps, files)]
    journal_tmp = _temp_for(journal)
    _write_synced(journal_tmp, json.dumps({"moves": moves}).encode())
    os.replace(journal_tmp, journal)
    _fsync_dir(journal.parent)
    # From here on the commit is decided: the next run rolls it forward if we die.
    placed: list[Path] = []
    for tmp, (final, _, mode) in zip(temps, files):
        if mode == "replace":
            os.replace(tmp, final)
            continue
        try:
            _place_new(tmp, final)
        except FileExistsError:
            # A writer that ignores our lock took the name: undo ours, leave theirs, keep the log as it was.
            for path in placed + temps:
                path.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            raise
        placed.append(final)
    for folder in {final.parent for final, _, _ in files}:
        _fsync_dir(folder)
    journal.unlink()
    _fsync_dir(journal.parent)


def next_version(raw_dir: Path, log: GenerationLog, page: Page) -> int:
    """One more than the highest version of the page on disk or in the log (a deleted image's number
    is not reused while the log remembers it)."""
    versions = versions_in(log, page)
    for path in raw_dir.iterdir():
        version = version_of(path.name, page)
        if version is not None:
            versions.append(version)
    return max(versions, default=0) + 1


def check_log(project: Project, chapter: int) -> None:
    """Fail early (before rendering for minutes) when the log could not be appended to."""
    read_log(project.log_file(chapter))


def published_by(project: Project, log: GenerationLog, page: Page, job_id: str) -> Published | None:
    """The version of `page` the log says job `job_id` made, if any."""
    raw = project.raw_dir(page.chapter)
    for entry in log.entries:
        if entry.get("jobId") != job_id:
            continue
        version = version_of(entry_file_name(entry) or "", page)
        if version is not None:
            printed = entry.get("printFile")
            return Published(version, raw / page.image_name(version), raw / page.workflow_name(version), log.path,
                             entry, project.root / printed if isinstance(printed, str) else None)
    return None


def publish(project: Project, page: Page, image: bytes, workflow: dict[str, Any],
            make_entry: Callable[[int], dict[str, Any]], print_image: bytes | None = None,
            job_id: str | None = None) -> Published:
    """Take the next version under the chapter lock and commit its image, workflow and log entry (and its
    print upscale into `print/`, in the same all-or-nothing commit). With `job_id`, a job the log already
    has a version of is not published twice: that version is answered (a daemon stopped between writing
    a version and recording its job as done runs the job again after its restart)."""
    raw = project.raw_dir(page.chapter)
    with chapter_lock(project, page.chapter):
        log = read_log(project.log_file(page.chapter))
        if job_id is not None and (done := published_by(project, log, page, job_id)) is not None:
            return done
        version = next_version(raw, log, page)
        image_path, workflow_path = raw / page.image_name(version), raw / page.workflow_name(version)
        entry = make_entry(version)
        log.entries.append(entry)
        workflow_bytes = (json.dumps(workflow, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        print_path = project.print_dir(page.chapter) / page.image_name(version) if print_image is not None else None
        files = [(image_path, image, "new"), (workflow_path, workflow_bytes, "new")]
        if print_path is not None and print_image is not None:
            print_path.parent.mkdir(parents=True, exist_ok=True)
            files.append((print_path, print_image, "new"))
        try:
            commit(project.chapter_output(page.chapter), raw / JOURNAL_NAME,
                   [*files, (log.path, log.serialize(), "replace")])
        except FileExistsError as exc:
            # Only a writer that ignores our lock can get here.
            raise StageError(f"{exc.filename} appeared while writing version {version}; nothing was "
                             "overwritten. Run again.", {"file": exc.filename}) from None
        return Published(version, image_path, workflow_path, log.path, entry, print_path)


def approve_version(project: Project, page: Page, version: int,
                    mark: Callable[[GenerationLog], dict[str, Any]]) -> dict[str, Any]:
    """Apply `mark` to the chapter's log and rewrite it atomically, under the lock."""
    with chapter_lock(project, page.chapter):
        log = read_log(project.log_file(page.chapter))
        entry = mark(log)
        raw = project.raw_dir(page.chapter)
        commit(project.chapter_output(page.chapter), raw / JOURNAL_NAME, [(log.path, log.serialize(), "replace")])
        return entry


def add_print(project: Project, page: Page, version: int, image: bytes,
              mark: Callable[[GenerationLog], None]) -> Path:
    """A rendered version's print (`print/<its name>`) and `mark`'s change to its log entry, committed
    together under the lock; an existing print is never replaced."""
    target = project.print_dir(page.chapter) / page.image_name(version)
    with chapter_lock(project, page.chapter):
        log = read_log(project.log_file(page.chapter))
        mark(log)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            commit(project.chapter_output(page.chapter), project.raw_dir(page.chapter) / JOURNAL_NAME,
                   [(target, image, "new"), (log.path, log.serialize(), "replace")])
        except FileExistsError as exc:
            raise StageError(f"{exc.filename} appeared meanwhile; nothing was overwritten.",
                             {"file": exc.filename}) from None
    return target


def write_atomic(path: Path, data: bytes) -> None:
    """One file, whole or absent (reports beside the versions, not part of a version's set)."""
    atomic.write_bytes(path, data, sync=True)
