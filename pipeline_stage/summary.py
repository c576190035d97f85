"""What `generate` prints when it ends: the `--json` summary on stdout, the one error line on stderr, and
the exit code (pipeline_stage/errors.py) of the error that stopped it."""

from __future__ import annotations

import json
from typing import Any

import click

from pipeline_stage.errors import StageError
from pipeline_stage.layout import Project
from pipeline_stage.stage import PageResult


def emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def fail(exc: StageError, json_out: bool, extra: dict[str, Any] | None = None) -> int:
    click.echo(f"error: {exc.message}", err=True)
    if json_out:
        emit_json({"ok": False, **(extra or {}), "exitCode": exc.exit_code, **exc.to_body()})
    return exc.exit_code


def result_json(project: Project, result: PageResult) -> dict[str, Any]:
    pub = result.published
    return {"page": str(result.task.page), "chapter": result.task.page.chapter, "pageNumber": result.task.page.page,
            "version": pub.version, "image": project.relative(pub.image), "workflow": project.relative(pub.workflow),
            "log": project.relative(pub.log), "jobId": result.job.id, "entry": pub.entry}
