"""`sidecar loras train|status|cancel|resume|runs|list`: the training API from the command line.

`train` submits a run and follows it (a progress bar with loss and ETA on a terminal, a line per
tenth of the run and per checkpoint otherwise). Ctrl-C stops *following*, never the training: an
hour of training is not lost to a keystroke; `sidecar loras cancel` stops it.
Exit codes: 0 succeeded (or submitted, with --detach), 1 the run failed, was cancelled or interrupted,
2 bad input (the daemon's 400), 3 daemon not running, 4 another training holds the device.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from sidecar.cli_support import current_settings, url_option
from sidecar.errors import EXIT_FAILED, EXIT_INTERRUPTED, DaemonRefused, DatasetNotReady
from sidecar.eta import format_eta
from sidecar.loras.client import TrainingClient
from sidecar.loras.remote_options import describe_remote, plan_lines, remote_body, remote_options

json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output (the run's JSON)")


def _client(url: str | None) -> TrainingClient:
    """The daemon of the configuration (its URL unless --url, and its token)."""
    return TrainingClient.for_settings(current_settings(), url)


def describe(run: dict[str, Any]) -> str:
    loss = (run.get("loss") or {}).get("smoothed")
    where = f"{run['engine']} on {run['device']}" if run.get("device") else run["engine"]
    parts = [f"{run['outputName']} ({run['id'][:8]}, {where}): {run['status']}",
             f"step {run['step']}/{run['total']}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if run["status"] in ("queued", "running"):
        parts.append(format_eta(run.get("etaSeconds")))
    if run.get("checkpoints"):
        parts.append(f"checkpoints at {', '.join(str(c['step']) for c in run['checkpoints'])}")
    if run.get("remote"):
        parts.append(describe_remote(run["remote"]) or "")
    return ", ".join(parts)


class _Follower:
    """What the user sees while a run is followed: a rich bar on a terminal, sparse lines elsewhere."""

    def __init__(self, run: dict[str, Any], quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.seen_checkpoints = {c["step"] for c in run.get("checkpoints") or []}
        self.last_tenth = -1
        if not quiet and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"))
            self.bar.start()
            self.task = self.bar.add_task(run["outputName"], total=run["total"] or None, info="")
        self.update(run)

    def update(self, run: dict[str, Any]) -> None:
        if self.quiet:
            return
        new = [c for c in run.get("checkpoints") or [] if c["step"] not in self.seen_checkpoints]
        self.seen_checkpoints.update(c["step"] for c in new)
        loss = (run.get("loss") or {}).get("smoothed")
        if self.bar is not None:
            info = " ".join(x for x in (f"loss {loss:.4f}" if loss is not None else "",
                                        format_eta(run.get("etaSeconds")) if run["status"] == "running" else run["status"]) if x)
            self.bar.update(self.task, completed=run["step"], total=run["total"] or None, info=info)
            for c in new:
                self.bar.console.print(f"checkpoint: step {c['step']} -> {c['fileName']}")
            return
        tenth = run["step"] * 10 // run["total"] if run["total"] else 0
        if tenth != self.last_tenth or new:
            self.last_tenth = tenth
            click.echo(describe(run))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def _follow(client: TrainingClient, run: dict[str, Any], quiet: bool, poll_interval: float) -> dict[str, Any]:
    view = _Follower(run, quiet)
    try:
        return await client.follow_run(run, view.update, poll_interval=poll_interval)
    finally:
        view.close()


def _finish(run: dict[str, Any], as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps(run, indent=2))
    else:
        click.echo(describe(run))
        for warning in run.get("warnings") or []:
            click.echo(f"warning: {warning}", err=True)
        if run.get("error"):
            click.echo(f"error: {run['error']['message']} ({run['error']['code']})", err=True)
        if run["status"] == "succeeded" and run.get("finalFile"):
            click.echo(f"final LoRA: {run['finalFile']}")
            click.echo(f"compare its checkpoints: sidecar loras sweep {run['id']} --prompts FILE")
        elif run["status"] in ("cancelled", "interrupted", "failed") and run.get("checkpoints"):
            click.echo(f"continue from step {run['checkpoints'][-1]['step']}: sidecar loras resume {run['id']}")
    return 0 if run["status"] in ("succeeded", "queued", "running") else EXIT_FAILED


def _call(url: str | None, work: Callable[[TrainingClient], Awaitable[int]]) -> None:
    """Run `work` against the daemon; Ctrl-C detaches. The client's errors reach the group's handler."""
    daemon = _client(url)

    async def go() -> int:
        async with daemon as client:
            return await work(client)

    try:
        code = asyncio.run(go())
    except KeyboardInterrupt:
        click.echo("\nstopped following; the training goes on (`sidecar loras status` / `sidecar loras cancel`).",
                   err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code)


@click.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--name", "output_name", required=True, help="the LoRA's file name without extension")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="[default: 1000]")
@click.option("--resolution", type=int, default=None, help="square training size [default: 512]")
@click.option("--dim", "network_dim", type=click.IntRange(1, 256), default=None, help="[default: 32]")
@click.option("--alpha", "network_alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[default: 16]")
@click.option("--learning-rate", type=float, default=None, help="[default: 1e-4]")
@click.option("--save-every", "save_every_n_steps", type=click.IntRange(min=1), default=None,
              help="steps between checkpoints [default: 200]")
@click.option("--seed", type=click.IntRange(min=0), default=None)
@click.option("--trainer", type=click.Choice(["kohya", "ai-toolkit", "embedded"]), default=None,
              help="[default: kohya when kohya_dir is configured or --remote is given, else embedded]")
@click.option("--engine", type=click.Choice(["kohya", "embedded", "ai-toolkit"]), default=None,
              help="an alias of --trainer")
@click.option("--family", type=click.Choice(["sd15", "sdxl", "flux"]), default=None,
              help="the base model's family [default: read from its file]; sdxl and flux need a GPU")
@click.option("--base-model", default=None,
              help="a hub id or a path on the training machine (ai-toolkit, kohya's SDXL and Flux)")
@click.option("--sample-prompt", "sample_prompts", multiple=True,
              help="a prompt the trainer samples while it trains (repeat it) [default: none]")
@click.option("--sample-every", type=click.IntRange(min=1), default=None, help="steps between samples "
                                                                              "[default: every save]")
@click.option("--tracking", type=click.Choice(["tensorboard", "wandb"]), default=None,
              help="experiment tracking by the trainer's own switch [default: none]")
@click.option("--trigger", "trigger_word", default=None, help="[default: the configured trigger_word]")
@click.option("--checkpoint", default=None, help="base model file name [default: the configured checkpoint]")
@click.option("--preset", type=click.Choice(["character", "style", "concept"]), default=None,
              help="training values for a character, a style or a concept, per family and trainer (the options "
                   "given win); see docs/training/presets.md")
@click.option("--force", is_flag=True, default=False,
              help="train even when the dataset quality gate finds problems (recorded in the run)")
@click.option("--detach", is_flag=True, help="submit and return at once")
@remote_options
@url_option
@json_option
@click.option("--poll-interval", default=2.0, type=click.FloatRange(min=0.01), hidden=True)
def train(dataset_dir: Path, detach: bool, url: str | None, as_json: bool, poll_interval: float,
          remote: str | None, estimate: bool, **params: Any) -> None:
    """Train a LoRA on DATASET_DIR (a captioned set, or kohya's img/ layout) and follow it.

    \b
    Examples:
      sidecar loras train ~/lora/train --name spyke_plasma_v1
      sidecar loras train ~/lora/train --name spyke_plasma_v1 --steps 1200 --engine embedded --detach
      sidecar loras train ~/lora/train --name spyke_plasma_v1 --preset character
      sidecar loras train ~/lora/train --name spyke_plasma_v1 --remote vast --estimate
      sidecar loras train ~/lora/train --name spyke_plasma_v1 --remote vast --max-total-cost 2
      sidecar loras train ~/lora/train --name spyke_plasma_v1 --remote ssh --host me@desktop.local
      sidecar loras train ~/lora/train --name spyke --trainer ai-toolkit --family flux \
          --base-model black-forest-labs/FLUX.1-dev --remote vast --estimate
    """
    remote_obj = remote_body(remote, params)
    body = {"datasetDir": str(dataset_dir.resolve()),
            **{_camel(k): (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
               if v is not None and v != ()}}
    if remote_obj is not None:
        body["remote"] = remote_obj

    async def work(client: TrainingClient) -> int:
        if estimate:
            plan = await client.request("POST", "/loras/estimate", json=body)
            click.echo(json.dumps(plan, indent=2) if as_json else "\n".join(plan_lines(plan)))
            return 0
        try:
            run = await client.train(body)
        except DaemonRefused as exc:
            if exc.code == DatasetNotReady.code and not as_json:
                print_findings(exc.details)
            raise
        if not as_json:
            click.echo(f"training {run['outputName']} as run {run['id']} ({run['engine']}, {run['total']} steps)")
        if not detach:
            run = await _follow(client, run, as_json, poll_interval)
        return _finish(run, as_json)

    _call(url, work)


def print_findings(details: dict[str, Any]) -> None:
    """The quality gate's findings, one a line with its fix (the error line follows from the group)."""
    findings = details.get("findings") or []
    click.echo(f"the dataset quality gate found {details.get('findingCount', len(findings))} problem(s) "
               f"(preset {details.get('preset') or 'none: character thresholds'}, family {details.get('family')}, "
               f"at least {details.get('minImages')} images, short side at least {details.get('minSide')} px):",
               err=True)
    for f in findings:
        where = f"{f['file']}: " if f.get("file") else ""
        click.echo(f"  {f['check']:<10} {where}{f['message']}\n             fix: {f['fix']}", err=True)
    if details.get("findingCount", 0) > len(findings):
        click.echo(f"  ... and {details['findingCount'] - len(findings)} more", err=True)
    click.echo(f"fix them (`sidecar dataset check DIR --preset {details.get('preset') or 'character'} --family "
               f"{details.get('family') or 'sd15'}` runs the same checks), or pass --force to train anyway.", err=True)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


@click.command()
@click.argument("run")
@click.option("--follow", is_flag=True, help="follow it until it ends")
@url_option
@json_option
@click.option("--poll-interval", default=2.0, type=click.FloatRange(min=0.01), hidden=True)
def status(run: str, follow: bool, url: str | None, as_json: bool, poll_interval: float) -> None:
    """A training run (id or output name): step, loss, ETA, checkpoints, last log lines."""

    async def work(client: TrainingClient) -> int:
        found = await client.find_run(run)
        if follow:
            found = await _follow(client, found, as_json, poll_interval)
        elif not as_json:
            for line in found.get("logTail") or []:
                click.echo(f"  | {line}")
        return _finish(found, as_json)

    _call(url, work)


@click.command()
@click.argument("run")
@url_option
@json_option
def cancel(run: str, url: str | None, as_json: bool) -> None:
    """Cancel a run: the trainer's process group is stopped, its checkpoints are kept."""

    async def work(client: TrainingClient) -> int:
        found = await client.cancel_run((await client.find_run(run))["id"])
        if as_json:
            click.echo(json.dumps(found, indent=2))
        else:
            click.echo(describe(found))
        return 0

    _call(url, work)


@click.command()
@click.argument("run")
@click.option("--detach", is_flag=True, help="resume and return at once")
@url_option
@json_option
@click.option("--poll-interval", default=2.0, type=click.FloatRange(min=0.01), hidden=True)
def resume(run: str, detach: bool, url: str | None, as_json: bool, poll_interval: float) -> None:
    """Continue an interrupted, cancelled or failed run from its last saved state, and follow it."""

    async def work(client: TrainingClient) -> int:
        found = await client.resume_run((await client.find_run(run))["id"])
        if not detach:
            found = await _follow(client, found, as_json, poll_interval)
        return _finish(found, as_json)

    _call(url, work)


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@url_option
@json_option
def runs(limit: int, url: str | None, as_json: bool) -> None:
    """Recent training runs, newest first."""

    async def work(client: TrainingClient) -> int:
        found = await client.runs(limit)
        if as_json:
            click.echo(json.dumps(found, indent=2))
        for run in [] if as_json else found:
            click.echo(describe(run))
        return 0

    _call(url, work)


@click.command("list")
@url_option
@json_option
def list_installed(url: str | None, as_json: bool) -> None:
    """The installed LoRAs, with the trigger word, steps, dim and alpha read from each file."""

    async def work(client: TrainingClient) -> int:
        found = await client.installed()
        if as_json:
            click.echo(json.dumps(found, indent=2))
            return 0
        for lora in found:
            facts = [f"{k} {lora[v]}" for k, v in (("trigger", "triggerWord"), ("steps", "steps"),
                                                    ("dim", "networkDim"), ("alpha", "networkAlpha"))
                     if lora.get(v) is not None]
            click.echo(f"{lora['id']:<32} {', '.join(facts)}")
        return 0

    _call(url, work)


COMMANDS = [train, status, cancel, resume, runs, list_installed]
