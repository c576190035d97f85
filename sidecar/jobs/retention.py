"""Retention: finished jobs older than `keep_days` leave the jobs table, and their images the data dir.

Only what the daemon itself keeps is removed: a succeeded, failed or cancelled job's row and its image in
`<data_dir>/outputs/`. Queued and running jobs are never touched, however old; nor is any file outside
the data dir (the pages the pipeline saved live in the artist's project, the pose images are the
artist's own). Files go first, then the rows: a crash in between leaves a row whose image is gone (the
next pass removes it), never an image no row points to.

Run by the daemon at start and daily (`RetentionTask`), by `POST /gc`, and by `sidecar gc` on a data dir
no daemon holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.jobs.store import UPSCALED_SUFFIX, JobRecord, JobStore
from sidecar.thumbnails import FOLDER as THUMBNAILS, owned_by

log = logging.getLogger("sidecar.retention")

DAY = 86400.0


@dataclass
class RetentionReport:
    keep_days: int
    cutoff: str | None  # None: retention is off (keep_days 0 in the settings), nothing is removed
    dry_run: bool
    job_ids: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    kept_outside: list[str] = field(default_factory=list)  # image paths outside the data dir: left alone
    removed_jobs: int = 0  # rows actually deleted (0 on a dry run)

    def summary(self) -> str:
        if self.cutoff is None:
            return "keep_days is 0: finished jobs are kept forever (pass --keep-days N to remove older ones)"
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {len(self.job_ids)} finished job(s) older than {self.keep_days} day(s) and "
                f"{self.files} image file(s), {human_bytes(self.bytes)}")


def cutoff_iso(keep_days: int, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = now - dt.timedelta(days=keep_days)
    # The store's own format (sqlite_store.now_iso), so the strings compare in time order.
    return cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def collect(store: JobStore, outputs_dir: Path, keep_days: int, *, dry_run: bool = False,
                  now: dt.datetime | None = None) -> RetentionReport:
    """Remove (or, on a dry run, only measure) the finished jobs older than `keep_days` days."""
    report = RetentionReport(keep_days=keep_days, cutoff=cutoff_iso(keep_days, now), dry_run=dry_run)
    jobs = await store.finished_before(report.cutoff)
    report.job_ids = [j.id for j in jobs]
    files = await asyncio.to_thread(_measure, jobs, outputs_dir, report)
    if dry_run or not jobs:
        return report
    await asyncio.to_thread(_unlink, files)
    report.removed_jobs = await store.delete_finished(report.job_ids)
    return report


def _owned_files(job: JobRecord, outputs_dir: Path) -> list[Path]:
    """The daemon's files of a job: its image (as recorded, or by the runner's name for it), its print
    upscale and its thumbnails."""
    candidates = [outputs_dir / f"{job.id}.png", outputs_dir / f"{job.id}{UPSCALED_SUFFIX}"]
    if job.output_file:
        candidates.append(Path(job.output_file))
    if job.upscaled_file:
        candidates.append(Path(job.upscaled_file))
    candidates += owned_by(outputs_dir / THUMBNAILS, job.id)  # the studio's cards of it (?size=)
    return list(dict.fromkeys(candidates))


def _measure(jobs: list[JobRecord], outputs_dir: Path, report: RetentionReport) -> list[Path]:
    root = outputs_dir.resolve()
    files: list[Path] = []
    for job in jobs:
        for path in _owned_files(job, outputs_dir):
            if not path.resolve().is_relative_to(root):
                report.kept_outside.append(str(path))
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            files.append(path)
            report.files += 1
            report.bytes += size
    return files


def _unlink(files: list[Path]) -> None:
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class RetentionTask:
    """The daemon's own pass: at start, then every `interval` seconds; `keep_days` 0 turns it off.
    A failed pass is logged and tried again at the next interval: retention must never stop the daemon."""

    def __init__(self, store: JobStore, outputs_dir: Path, keep_days: int, interval: float = DAY):
        self.store = store
        self.outputs_dir = outputs_dir
        self.keep_days = keep_days
        self.interval = interval
        self.lock = asyncio.Lock()  # one pass at a time (the daily one and POST /gc)
        self.last: RetentionReport | None = None
        self._task: asyncio.Task | None = None

    async def run_once(self, keep_days: int | None = None, dry_run: bool = False) -> RetentionReport:
        """`keep_days` None: the setting's, where 0 keeps everything; an explicit 0 removes every finished job."""
        if keep_days is None and self.keep_days == 0:
            return RetentionReport(keep_days=0, cutoff=None, dry_run=dry_run)
        async with self.lock:
            report = await collect(self.store, self.outputs_dir,
                                   self.keep_days if keep_days is None else keep_days, dry_run=dry_run)
        if not dry_run:
            self.last = report
            if report.job_ids:
                log.info("retention: %s", report.summary())
        return report

    def start(self) -> None:
        if self.keep_days > 0:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a full disk, a locked database: next time
                log.exception("retention pass failed; trying again in %g s", self.interval)
            await asyncio.sleep(self.interval)
