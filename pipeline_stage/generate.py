"""The `generate` run itself: the command line's options checked, its pages made into tasks (rendered,
reproduced, more-like, drafts, upscaled, routed), then printed (`--dry-run`) or rendered on the daemon."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from pipeline_stage.consistency import ConsistencyReport
from pipeline_stage.daemon import DEFAULT_URL
from pipeline_stage.drafts import DEFAULT_DRAFT_STEPS, draft_request, from_draft_task
from pipeline_stage.draftrun import check_draft_options, render_drafts_of
from pipeline_stage.errors import EXIT_INTERRUPTED, InputError, StageError
from pipeline_stage.layout import Project
from pipeline_stage.morelike import check_more_like_options, more_like_task, with_variations
from pipeline_stage.pagerun import refine_only, render_all
from pipeline_stage.printing import check_print_options
from pipeline_stage.printrun import print_one
from pipeline_stage.prompts import load_defaults, upscale_request
from pipeline_stage.refine import refine_ask
from pipeline_stage.reproduce import reproduce_task
from pipeline_stage.stage import PageResult
from pipeline_stage.summary import emit_json, fail, result_json
from pipeline_stage.tasks import PARAM_OPTIONS, page_tasks
from sidecar.config import client_token

POOL_PARALLEL = 64  # pages in flight with --where away from local: the daemon's router does the spreading


def generate(opts: dict[str, Any]) -> int:
    json_out = opts["json_out"]
    project = Project(Path(opts["root"]).expanduser().resolve())
    done: list[PageResult] = []
    reports: list[ConsistencyReport] = []

    def progress_json() -> dict[str, Any]:
        return {"pages": [result_json(project, r) for r in done],
                "consistency": [r.figures for r in reports]}

    try:
        if opts["repeat"] < 1:
            raise InputError("--repeat must be at least 1.")
        check_print_options(opts, PARAM_OPTIONS)
        if opts["version"] is not None:
            url = opts["daemon"] or load_defaults(project.config_file()).daemon or DEFAULT_URL
            return print_one(url, opts["token"] or client_token(), project, opts, json_out)
        check_draft_options(opts, PARAM_OPTIONS)
        check_more_like_options(opts)
        refine = refine_ask(opts)
        tasks = [reproduce_task(project, opts)] if opts["reproduce"] else page_tasks(project, opts)
        if opts["more_like"] is not None:
            tasks = [more_like_task(project, t, opts["more_like"]) for t in tasks]
        if opts["variations"] is not None:
            tasks = [with_variations(t, opts["variations"]) for t in tasks]
        if opts["from_draft"] is not None:
            tasks = [from_draft_task(project, t.page, opts["from_draft"], t.request.steps, t.request) for t in tasks]
        if opts["drafts"] is not None:
            steps = opts["draft_steps"] or DEFAULT_DRAFT_STEPS
            tasks = [replace(t, request=draft_request(t.request, opts["drafts"], steps, opts["draft_checkpoint"]),
                             draft_checkpoint=opts["draft_checkpoint"]) for t in tasks]
        if opts["where"]:
            tasks = [replace(t, request=t.request.model_copy(update={"where": opts["where"]})) for t in tasks]
        if opts["upscale"] is not None:
            tasks = [replace(t, request=upscale_request(t.request, opts["upscale"], opts["drafts"])) for t in tasks]
        parallel = opts["parallel"] or (POOL_PARALLEL if opts["where"] not in (None, "local") else 1)
        url = opts["daemon"] or load_defaults(project.config_file()).daemon or DEFAULT_URL
        token = opts["token"] or client_token()
        if opts["dry_run"] and refine is not None:  # show the refined requests; still nothing submitted
            tasks = asyncio.run(refine_only(url, token, project, tasks, refine, json_out))
        if opts["dry_run"]:
            requests = [{"page": str(t.page), "promptFile": t.prompt_file, "daemon": url,
                         "request": t.request.model_dump(by_alias=True, exclude_none=True, mode="json")}
                        for t in tasks]
            if json_out:
                emit_json({"ok": True, "dryRun": True, "requests": requests})
            else:
                for item in requests:
                    click.echo(f"# {item['page']} ({item['promptFile']}) -> POST {url}/jobs"
                               + (f" x{opts['repeat']}" if opts["repeat"] > 1 else ""))
                    click.echo(json.dumps(item["request"], indent=2, ensure_ascii=False))
            return 0
        # The daemon's token comes from the daemon's own settings (SIDECAR_TOKEN, its config file's `token`).
        token = opts["token"] or client_token()
        if opts["drafts"] is not None:
            return render_drafts_of(url, token, project, tasks, json_out)
        asyncio.run(render_all(url, token, project, tasks, opts["repeat"], json_out, done, reports, parallel,
                                refine))
    except StageError as exc:
        return fail(exc, json_out, progress_json())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted: a queued or running job was cancelled on the daemon; versions already "
                   "written are complete, nothing is half-written.", err=True)
        if json_out:
            emit_json({"ok": False, **progress_json(), "exitCode": EXIT_INTERRUPTED,
                        "error": {"code": "interrupted", "message": "interrupted", "details": {}}})
        return EXIT_INTERRUPTED
    if json_out:
        emit_json({"ok": True, **progress_json()})
    return 0
