"""`sidecar loras`: pick and install a trained LoRA. `sweep` renders every checkpoint of a run through
the running daemon into a contact sheet; `promote` has the daemon install the chosen checkpoint for
generation (`POST /loras/{id}/promote`).

Exit codes: 0 ok, 1 a render failed / the file could not be installed, 2 usage or input error,
3 the daemon is not running, 4 the device is busy training.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from sidecar.cli_support import current_settings, report_sheet, tool_group, url_option
from sidecar.errors import EXIT_INPUT
from sidecar.loras import runs
from sidecar.loras import sweep as sweep_mod
from sidecar.loras.client import TrainingClient
from sidecar.loras.publish import publish


class _Lines:
    def cell_done(self, done: int, total: int, cell: sweep_mod.Cell) -> None:
        what = "no LoRA" if cell.step is None else f"step {cell.step}"
        click.echo(f"[{done}/{total}] {what}, seed {cell.seed}: {cell.status}"
                   + (f" ({cell.error})" if cell.error else ""))


class _Bar:
    def __init__(self, total: int):
        from rich.progress import Progress

        self.progress = Progress()
        self.progress.start()
        self.task = self.progress.add_task("rendering", total=total)

    def cell_done(self, done: int, total: int, cell: sweep_mod.Cell) -> None:
        self.progress.update(self.task, completed=done)
        if cell.error:
            self.progress.console.print(f"[red]step {cell.step}, seed {cell.seed}: {cell.error}")

    def close(self) -> None:
        self.progress.stop()


@tool_group()
def loras() -> None:
    """Train LoRAs, compare a run's checkpoints (sweep) and install one (promote).

    \b
    Examples:
      sidecar loras train ~/lora/train --name spyke_plasma_v1
      sidecar loras status spyke_plasma_v1 --follow
      sidecar loras sweep spyke_plasma_v1 --prompts prompts.txt --seeds 1,2,3
      sidecar loras promote spyke_plasma_v1 --step 800
      sidecar loras publish spyke_plasma_v1 --with-dataset
      sidecar loras list
    """


for command in runs.COMMANDS:
    loras.add_command(command)
loras.add_command(publish)


@loras.command()
@click.argument("run")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="text file, one prompt per line (# comments allowed)")
@click.option("--seeds", default="1,2,3", show_default=True, help="comma-separated seeds, each rendered per prompt")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="folder for the images, contact-sheet.png and index.json [default: <run folder>/sweep]")
@click.option("--strength", type=click.FloatRange(0, 2), default=None, help="LoRA strength [default: the daemon's]")
@click.option("--steps", type=click.IntRange(1, 150), default=None, help="sampling steps [default: the daemon's]")
@click.option("--width", type=int, default=None, help="[default: the daemon's]")
@click.option("--height", type=int, default=None, help="[default: the daemon's]")
@click.option("--baseline", is_flag=True, help="add a column rendered without any LoRA")
@click.option("--cell", "cell_px", default=256, show_default=True, type=click.IntRange(64, 1024),
              help="size of one image on the sheet")
@click.option("--loras-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="the daemon's LoRA folder [default: the daemon's: ComfyUI's models/loras when configured, "
                   "else <models>/loras]")
@click.option("--keep-staged", is_flag=True, help="leave the checkpoints staged in the LoRA folder afterwards")
@click.option("--promote-best", is_flag=True,
              help="install the pick (the checkpoint most like the character) as `sidecar loras promote` does")
@url_option
@click.option("--json", "as_json", is_flag=True, help="print the index as JSON")
@click.option("--poll-interval", default=1.0, type=click.FloatRange(min=0.01), hidden=True)
def sweep(run: str, prompts_file: Path, seeds: str, out: Path | None, strength: float | None, steps: int | None,
          width: int | None, height: int | None, baseline: bool, cell_px: int, loras_dir: Path | None,
          keep_staged: bool, promote_best: bool, url: str | None, as_json: bool, poll_interval: float) -> None:
    """Render the same prompts and seeds with every saved checkpoint of RUN (id or output name), score
    every image against the character's references and rank the checkpoints.

    The daemon stages each checkpoint in its LoRA folder under a `sweep--...` name for the duration
    (that is how the daemon and ComfyUI find LoRAs: by file name), then removes it. The ranking (mean
    likeness, share judged `same`, failed or broken images as failures) and the `pick` go into
    index.json and on the sheet; they need the daemon started with `--project` (character.toml with
    `references`) and the likeness weights (`sidecar models fetch ccip`).
    """
    settings = current_settings()
    prompts = sweep_mod.read_prompts(prompts_file)
    seed_list = sweep_mod.parse_seeds(seeds)
    target_dir = str(loras_dir.expanduser().resolve()) if loras_dir else None
    daemon = TrainingClient.for_settings(settings, url)
    job: dict[str, Any] = {}
    if strength is not None:
        job["loraStrength"] = strength
    if steps is not None:
        job["steps"] = steps
    if width or height:
        job["resolution"] = {"width": width or 512, "height": height or 768}
    code = asyncio.run(_sweep(run, prompts, seed_list, out, target_dir, baseline, job, daemon, cell_px,
                              keep_staged, as_json, poll_interval, promote_best))
    sys.exit(code)


async def _sweep(ref: str, prompts: list[str], seeds: list[int], out: Path | None, target_dir: str | None,
                 baseline: bool, job: dict[str, Any], daemon: TrainingClient, cell_px: int, keep_staged: bool, as_json: bool,
                 poll_interval: float, promote_best: bool = False) -> int:
    reporter: Any = _Bar(0) if sys.stdout.isatty() and not as_json else _Lines()
    try:
        async with daemon as client:
            run = await client.find_run(ref)
            folder = out or Path(run["outputDir"]).parent / "sweep"
            plan = sweep_mod.plan_sweep(run, prompts, seeds, folder, baseline)
            try:
                await sweep_mod.stage(plan, client, target_dir)
                if isinstance(reporter, _Bar):
                    reporter.progress.update(reporter.task, total=len(plan.cells))
                else:
                    click.echo(f"sweeping {len(plan.columns)} checkpoint(s) x {len(plan.rows)} prompt/seed row(s) "
                               f"= {len(plan.cells)} render(s)")
                await sweep_mod.render(plan, client, reporter, job, poll_interval)
                await sweep_mod.score(plan, client)
            finally:
                if not keep_staged:
                    await sweep_mod.unstage(plan, client, target_dir)
    finally:
        if isinstance(reporter, _Bar):
            reporter.close()
    sheet = await asyncio.to_thread(sweep_mod.contact_sheet, plan, cell_px)
    index = await asyncio.to_thread(sweep_mod.write_index, plan, sheet, job.get("loraStrength"))
    failed = sum(c.status != "succeeded" for c in plan.cells)
    best = sweep_mod.pick(plan)
    if not as_json:
        _print_ranking(plan)
    code = report_sheet(index, sheet, failed, len(plan.cells), as_json=as_json,
                        hint=None if promote_best else
                        f"promote {'it' if best else 'the best one'} with: sidecar loras promote {plan.run['id']} "
                        f"--step {best['step'] if best else '<N>'}")
    if promote_best:
        if best is None:
            click.echo(f"error: not promoting: the sweep has no ranking ({plan.unranked}).", err=True)
            return code or EXIT_INPUT
        async with daemon as client:
            done = await client.promote(plan.run["id"], {"step": best["step"]} |
                                        ({"lorasDir": target_dir} if target_dir else {}))
        if not as_json:
            verb = "is already installed as" if done["alreadyInstalled"] else "installed as"
            click.echo(f"pick: {best['label']} {verb} {done['path']}")
    return code


def _print_ranking(plan: sweep_mod.SweepPlan) -> None:
    if not plan.ranking:
        click.echo(f"no likeness ranking: {plan.unranked}")
        return
    click.echo("likeness ranking (mean score, share same, failures):")
    for r in plan.ranking:
        click.echo(f"  #{r['rank']} {r['label']}: {r['meanScore']:.3f}, {r['shareSame']:.0%} same, "
                   f"{r['failures']} failed of {r['images']}")
    click.echo(f"pick: {plan.ranking[0]['label']}")


@loras.command()
@click.argument("run")
@click.option("--step", type=click.IntRange(min=1), default=None,
              help="the checkpoint's step [default: the run's final LoRA]")
@click.option("--name", default=None, help="file name in the LoRA folder, without .safetensors [default: the run's "
                                           "output name]")
@click.option("--loras-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="[default: the daemon's: ComfyUI's models/loras when configured, else <models>/loras]")
@url_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def promote(run: str, step: int | None, name: str | None, loras_dir: Path | None, url: str | None,
            as_json: bool) -> None:
    """Install checkpoint STEP of RUN (id or output name) as a LoRA generation can use.

    The daemon copies it into its LoRA folder named for the character; an existing different file
    of that name is never overwritten (exit 1).
    """
    body = {k: v for k, v in {"step": step, "name": name,
                              "lorasDir": str(loras_dir.resolve()) if loras_dir else None}.items() if v is not None}

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with TrainingClient.for_settings(current_settings(), url) as client:
            found = await client.find_run(run)
            return found, await client.promote(found["id"], body)

    found, done = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(done))
        return
    verb = "is already installed as" if done["alreadyInstalled"] else "installed as"
    click.echo(f"step {done['step']} of {found['outputName']} {verb} {done['path']}")
    click.echo(f'generate with it: POST /jobs {{"loraId": "{done["loraId"]}", ...}}')
