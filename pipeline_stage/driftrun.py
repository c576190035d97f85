"""`generate consistency -c 1`: the chapter's likeness report (`pipeline_stage.drift` does the work).
Approved versions logged without a likeness are scored through the daemon when it answers and its
project has a reference set; otherwise they are listed as not scored, with the daemon's reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from pipeline_stage import drift
from pipeline_stage.daemon import DEFAULT_URL, DaemonClient
from pipeline_stage.errors import EXIT_OK, StageError
from pipeline_stage.layout import Project
from sidecar.config import client_token
from sidecar.errors import SidecarError


async def _score_missing(url: str, token: str | None, project: Project, report: drift.DriftReport) -> None:
    todo = report.unscored
    if not todo:
        return
    try:
        async with DaemonClient(url, token=token) as client:
            answer = await client.request("POST", "/likeness/score",
                                          json={"images": [str(drift.image_path(project, p)) for p in todo]})
    except SidecarError as exc:
        report.unscored_why = f"{exc.code}: {exc.message}"
        return
    for page, result in zip(todo, answer["results"], strict=True):
        page.likeness = result["likeness"]


@click.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Project root.")
@click.option("-c", "--chapter", type=click.IntRange(min=0), required=True, help="Chapter number.")
@click.option("--daemon", metavar="URL", envvar="SIDECAR_DAEMON_URL", default=DEFAULT_URL, show_default=True,
              help="The daemon that scores approved versions logged without a likeness.")
@click.option("--token", envvar="SIDECAR_TOKEN", default=None, help="The daemon's token, if it has one.")
@click.option("--json", "json_out", is_flag=True, help="Print the report as JSON.")
def consistency(root: Path, chapter: int, daemon: str, token: str | None, json_out: bool) -> None:
    """The chapter's likeness report: each page's approved version judged against the character's
    references; pages judged `different`, or far below the chapter's median, are named as drift.

    \b
    Example:
      generate consistency -c 1      -> output/ch-01/consistency/likeness.json
    """
    project = Project(root.expanduser().resolve())
    try:
        pages, unapproved = drift.approved_versions(project, chapter)
    except StageError as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(exc.exit_code) from None
    report = drift.DriftReport(chapter, pages, None, unapproved)
    asyncio.run(_score_missing(daemon, token or client_token(), project, report))
    report.median = drift.flag(report.pages)
    path = drift.write(project, report)
    if json_out:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in drift.lines(report, project, path):
            click.echo(line)
    raise SystemExit(EXIT_OK)
