"""The command side of drafts: which option combinations make sense, and a draft run's output lines,
JSON summary and exit code (`pipeline_stage.drafts` does the work)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.drafts import Draft, DraftRun, render_drafts
from pipeline_stage.errors import EXIT_OK, InputError, JobFailedError, StageError
from pipeline_stage.layout import Project
from pipeline_stage.stage import PageTask


def check_draft_options(opts: dict[str, Any], param_options: tuple[str, ...]) -> None:
    """Refuse, before anything is sent, the combinations that cannot mean anything."""
    drafts, from_draft = opts["drafts"], opts["from_draft"]
    if opts["draft_steps"] is not None and drafts is None:
        raise InputError("--draft-steps goes with --drafts N.")
    if opts.get("draft_checkpoint") is not None and drafts is None:
        raise InputError("--draft-checkpoint goes with --drafts N.")
    if drafts is None and from_draft is None:
        return
    flag = "--drafts" if drafts is not None else "--from-draft"
    if drafts is not None and from_draft is not None:
        raise InputError("--drafts renders drafts and --from-draft finishes one of them: run them one after the other.")
    if opts["repeat"] != 1:
        raise InputError(f"{flag} does not combine with --repeat.")
    if opts["reproduce"]:
        raise InputError(f"{flag} does not combine with --reproduce.")
    if from_draft is not None:
        if opts["page"] is None:
            raise InputError("--from-draft K names a draft of one page: use it with --page N.")
        given = [f"--{name.replace('_', '-')}" for name in param_options
                 if name != "steps" and opts[name] not in (None, False)]
        if given:
            raise InputError(f"--from-draft renders the draft's own parameters (only --steps may change); "
                             f"it takes no {', '.join(given)}.")


def render_drafts_of(url: str, token: str | None, project: Project, tasks: list[PageTask], json_out: bool) -> int:
    runs: list[tuple[PageTask, DraftRun]] = []

    def line(draft: Draft, done: int, total: int) -> None:
        if not json_out:
            what = f"-> {draft.file}" if draft.file else f"{draft.status} ({draft.error})"
            if draft.likeness is not None:
                what += f" (likeness {draft.likeness.score:.2f}, {draft.likeness.verdict})"
            click.echo(f"  draft {draft.number} ({done}/{total}), seed {draft.seed}: {what}")

    async def go() -> None:
        async with DaemonClient(url, token=token) as client:
            for task in tasks:
                if not json_out:
                    click.echo(f"{task.page}: {task.request.variations} drafts at {task.request.steps} steps")
                run = await render_drafts(client, project, task, line)
                runs.append((task, run))
                if not json_out:
                    best = max((d for d in run.made if d.likeness is not None),
                               key=lambda d: d.likeness.score, default=None)  # type: ignore[union-attr]
                    if best is not None:
                        click.echo(f"{task.page}: most like the character: draft {best.number} "
                                   f"({best.likeness.score:.2f}, {best.likeness.verdict})")
                    elif any(d.file for d in run.made):
                        click.echo(f"{task.page}: drafts not ranked by likeness: the daemon's project has no "
                                   "reference set or no likeness weights (`sidecar likeness check` says which)")
                    click.echo(f"{task.page}: contact sheet {project.relative(run.sheet)}, index "
                               f"{project.relative(run.index)}; finish one with --from-draft K")

    def summary() -> dict[str, Any]:
        return {"drafts": [{"page": str(t.page), "folder": project.relative(r.folder),
                            "sheet": project.relative(r.sheet), "index": project.relative(r.index),
                            "made": [d.model_dump(mode="json", by_alias=True) for d in r.made]} for t, r in runs]}

    try:
        asyncio.run(go())
    except StageError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if json_out:
            click.echo(json.dumps({"ok": False, **summary(), "exitCode": exc.exit_code, **exc.to_body()}, indent=2))
        return exc.exit_code
    failed = [d for _, r in runs for d in r.made if d.status != "succeeded"]
    if json_out:
        click.echo(json.dumps({"ok": not failed, **summary()}, indent=2))
    if failed:
        click.echo(f"error: {len(failed)} draft(s) did not render: "
                   + "; ".join(f"#{d.number} {d.error}" for d in failed), err=True)
        return JobFailedError.exit_code
    return EXIT_OK
