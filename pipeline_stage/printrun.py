"""`generate --version N --upscale MODEL`: the print of a version already rendered, run from the command
line (the print itself: pipeline_stage.printing)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.layout import Page, Project
from pipeline_stage.printing import Printed, print_version
from pipeline_stage.progress import make_progress
from pipeline_stage.summary import emit_json


def print_one(url: str, token: str | None, project: Project, opts: dict[str, Any], json_out: bool) -> int:
    """`--version N --upscale MODEL`: the print of a version already rendered (pipeline_stage.printing)."""
    page = Page(opts["chapter"], opts["page"])
    if opts["dry_run"]:
        request = {"upscaleModel": opts["upscale"],
                   "initImagePath": str(project.raw_dir(page.chapter) / page.image_name(opts["version"]))}
        if json_out:
            emit_json({"ok": True, "dryRun": True, "requests": [{"page": str(page), "request": request}]})
        else:
            click.echo(f"# {page} v{opts['version']} print -> POST {url}/jobs")
            click.echo(json.dumps(request, indent=2))
        return 0

    async def run() -> Printed:
        view = make_progress(json_out, preview_path=project.preview_file())
        async with DaemonClient(url, token=token) as client:
            return await print_version(client, project, page, opts["version"], opts["upscale"], view)

    printed = asyncio.run(run())
    if json_out:
        emit_json({"ok": True, "print": {"page": str(page), "version": printed.version, "model": printed.model,
                                          "file": project.relative(printed.file), "jobId": printed.job_id}})
    else:
        click.echo(f"{page} v{printed.version} print ({printed.model}) -> {project.relative(printed.file)}")
    return 0
