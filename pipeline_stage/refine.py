"""`generate --refine TEXT`: each page's prompt is refined through the daemon (`POST /prompt/refine`, which
asks the local Ollama) before anything is submitted; the diff is shown, the page renders with the refined
prompt and its job and log entry record `refinedFrom`. With `--write` the prompt file gets the refined text
(front matter kept) once its version is published.

Every page is refined before the first is submitted: Ollama not running or a model missing stops the run
with nothing queued and nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from pipeline_stage.errors import DaemonNotRunning, InputError, RefineFailed
from pipeline_stage.layout import Project
from pipeline_stage.stage import PageTask
from sidecar.assist.promptfile import read_prompt_file, rewrite
from sidecar.assist.provenance import RefinedFrom
from sidecar.client import DaemonClient, DaemonRefused, DaemonUnavailable
from sidecar.errors import SidecarError, error_class


async def refine_tasks(client: DaemonClient, project: Project, tasks: list[PageTask], feedback: str,
                       look: Path | None, show: bool) -> list[PageTask]:
    refined = []
    for task in tasks:
        if task.request.prompt is None:  # a whole workflow (--reproduce refuses --refine before this)
            refined.append(task)
            continue
        body: dict[str, Any] = {"feedback": feedback, "prompt": task.request.prompt}
        if task.prompt_file is not None:
            body["promptFile"] = str((project.root / task.prompt_file).resolve())
        if look is not None:
            body["lookImagePath"] = str(look)
        try:
            answer = await client.request("POST", "/prompt/refine", json=body)
        except DaemonUnavailable as exc:
            raise DaemonNotRunning(f"{exc.message} Or point --daemon at the one running.", exc.details) from None
        except DaemonRefused as exc:  # Ollama's failures keep their own code and exit code
            known = error_class(exc.code)
            raise RefineFailed(f"{task.page}: refining failed: {exc.message} Nothing was submitted or written.",
                               {"page": str(task.page), "daemonCode": exc.code, **exc.details}, code=exc.code,
                               exit_code=known.exit_code if known is not None else 1) from None
        if show:
            show_answer(str(task.page), answer)
        request = task.request.model_copy(update={
            "prompt": answer["refined"], "refined_from": RefinedFrom.model_validate(answer["refinedFrom"])})
        refined.append(replace(task, request=request, refine=answer))
    return refined


def show_answer(page: str, answer: dict[str, Any]) -> None:
    prov = answer["refinedFrom"]
    click.echo(f"{page}: refined by {prov['model']} ({(prov.get('modelDigest') or '?')[:12]}): "
               f"{answer.get('summary') or ''}".rstrip())
    for change in answer["changes"]:
        if change["status"] == "refused":
            click.echo(f"  refused {change['op']} {change['tag']!r}: {change['note']}")
    for warning in answer.get("warnings") or []:
        click.echo(f"  warning: {warning}", err=True)
    click.echo("\n".join(f"  {line}" for line in answer["diff"]) if answer["changed"] else "  (prompt unchanged)")


def write_refined(project: Project, task: PageTask) -> str | None:
    """After the version is published: the refined text into the prompt file, unless the file changed
    meanwhile. Returns what was done, for the summary."""
    if task.refine is None or task.prompt_file is None or not task.refine["changed"]:
        return None
    path = project.root / task.prompt_file
    try:
        page = read_prompt_file(path)
        if page.text != task.refine["original"]:
            return f"not written: {task.prompt_file} changed since it was refined"
        rewrite(page, task.refine["refined"])
    except SidecarError as exc:
        return f"not written: {exc.message}"
    return f"wrote the refined prompt to {task.prompt_file}"


@dataclass(frozen=True)
class RefineAsk:
    feedback: str
    look: Path | None
    write: bool


def refine_ask(opts: dict[str, Any]) -> RefineAsk | None:
    if opts["refine"] is None:
        if opts["write"] or opts["look"]:
            raise InputError("--write and --look go with --refine TEXT.")
        return None
    if opts["reproduce"]:
        raise InputError("--reproduce submits a workflow as it was; it cannot be --refine'd.")
    if opts.get("drafts") is not None or opts.get("from_draft") is not None:
        raise InputError("--refine renders the refined page itself; refine first (or `sidecar prompt refine "
                         "--write`), then make --drafts or --from-draft.")
    if not opts["refine"].strip():
        raise InputError("--refine needs the feedback text, e.g. --refine \"look left, dusk\".")
    look = Path(opts["look"]).expanduser().resolve() if opts["look"] else None
    if look is not None and not look.is_file():
        raise InputError(f"--look image not found: {look}", {"path": str(look)})
    return RefineAsk(opts["refine"].strip(), look, opts["write"])
