"""`sidecar gc`: remove finished jobs older than keep_days and their images in the data dir.

Through the running daemon (`POST /gc`) when one answers, so that a single process writes the data
dir; only when nothing answers at the daemon's address does it open the store itself. Queued and
running jobs, and every file outside the data dir (the pages in the artist's project), are never touched.

Exit codes: 0 ok, 1 failed, 2 bad configuration or input.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import click

from sidecar.api.responses import GcReport
from sidecar.cli_support import settings_from
from sidecar.config import Settings
from sidecar.datadir_lock import DataDirLock
from sidecar.errors import DaemonUnavailable, SidecarError


async def _through_daemon(url: str, body: dict[str, Any], token: str | None) -> GcReport:
    from sidecar.client import DaemonClient

    async with DaemonClient(url, timeout=600, token=token) as client:
        return GcReport.model_validate(await client.request("POST", "/gc", json=body))


async def _offline(settings: Settings, keep_days: int | None, dry_run: bool) -> GcReport:
    from sidecar.jobs.retention import RetentionReport, RetentionTask
    from sidecar.jobs.store import JobStore

    if not settings.db_path.is_file():
        return GcReport.from_report(RetentionReport(
            keep_days=keep_days if keep_days is not None else settings.keep_days, cutoff=None, dry_run=dry_run))
    # The data dir's lock, as a daemon holds it: no daemon starts on it meanwhile, and a daemon that owns
    # it but does not answer at `url` (another port) makes this DataDirLocked, naming it.
    lock = DataDirLock(settings.data_dir)
    lock.acquire(None, None)
    store = JobStore(settings.db_path)
    try:
        await store.open()
        task = RetentionTask(store, settings.jobs_dir, settings.keep_days)
        return GcReport.from_report(await task.run_once(keep_days, dry_run=dry_run))
    finally:
        await store.close()
        lock.release()


def describe(report: GcReport, where: str) -> str:
    from sidecar.jobs.retention import human_bytes

    if report.cutoff is None:
        return ("keep_days is 0 (finished jobs are kept forever): nothing removed. Pass --keep-days N to remove "
                "the jobs that ended more than N days ago.")
    verb = "would remove" if report.dry_run else "removed"
    line = (f"{verb} {report.jobs} finished job(s) that ended before {report.cutoff} "
            f"(keep_days {report.keep_days}) and {report.files} image file(s), "
            f"{human_bytes(report.bytes)} ({report.bytes} bytes) [{where}]")
    if report.kept_outside_data_dir:
        line += f"; {len(report.kept_outside_data_dir)} image(s) outside the data dir left alone"
    return line


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="show what would be removed and its size; change nothing")
@click.option("--keep-days", type=click.IntRange(0, 36500), default=None,
              help="remove jobs that ended more than N days ago [default: the keep_days setting; 0 = all finished]")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config file")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="the daemon's data dir")
@click.option("--port", type=int, default=None, help="the daemon's port [default: 3000]")
def gc(dry_run: bool, keep_days: int | None, as_json: bool, **flags: Any) -> None:
    """Remove finished jobs older than keep_days (default 30) and their images in the data dir.

    \b
    Examples:
      sidecar gc --dry-run                 # what would go, and how many bytes
      sidecar gc                           # remove jobs that ended more than keep_days days ago
      sidecar gc --keep-days 7 --json

    Queued and running jobs are never removed, nor the pages the pipeline saved in your project.
    """
    settings, _ = settings_from(flags)
    url = settings.daemon_url
    body: dict[str, Any] = {"dryRun": dry_run}
    if keep_days is not None:
        body["keepDays"] = keep_days
    try:
        report, where = asyncio.run(_through_daemon(url, body, settings.token_value)), f"daemon at {url}"
    except DaemonUnavailable as exc:  # a refusal (DaemonRefused) goes to the group's handler as is
        if "status" in exc.details:  # something else answers there: never guess, never write beside it
            raise
        try:
            report, where = asyncio.run(_offline(settings, keep_days, dry_run)), f"no daemon; {settings.db_path}"
        except (OSError, sqlite3.Error, SidecarError) as err:
            raise SidecarError(f"cannot clean {settings.data_dir}: {getattr(err, 'message', err)}") from None
    if as_json:
        click.echo(json.dumps({**report.model_dump(by_alias=True), "via": where}, indent=2))
    else:
        click.echo(describe(report, where))

