"""`sidecar grid`: render every combination of some job parameters through the running daemon into a
labelled contact sheet and an `index.json` naming every cell.

    sidecar grid --prompt-file prompts/ch-01/ch01_p003.txt --x loraStrength=0.6,0.8,1.0 --y seed=1,2,3

Exit codes: 0 every cell rendered, 1 some cell failed (the sheet and index are still written), 2 a bad
axis, value or prompt file, or a request the daemon refused (nothing left queued), 3 the daemon is
not running, 4 a training holds the device. (Run as `sidecar grid`: the root group turns our errors
into their one line and exit code.)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from sidecar.cli_support import CONTEXT_SETTINGS, current_settings, report_sheet, url_option
from sidecar.client import DaemonClient
from sidecar.grids import plan as grid_plan
from sidecar.grids.axes import parse_axis
from sidecar.grids.render import WINDOW, render_cells

AXIS_HELP = "NAME=V1,V2,... over a job parameter ({}); `||` separates values holding commas; 1..8 for integers"


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--prompt-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="a page prompt file: the prompt, optionally after TOML front matter between +++ lines")
@click.option("--x", "x_axis", required=True, help="columns: " + AXIS_HELP.format("seed, steps, cfg, loraStrength..."))
@click.option("--y", "y_axis", default=None, help="rows (same form)")
@click.option("--z", "z_axis", default=None, help="row groups (same form): each y row again per z value")
@click.option("--set", "fixed", multiple=True, help="NAME=VALUE for every cell (e.g. --set steps=8); repeatable")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="folder for images/, contact-sheet.png and index.json [default: ./grid-<date>-<time>]")
@click.option("--cell", "cell_px", default=256, show_default=True, type=click.IntRange(64, 1024),
              help="size of one image on the sheet")
@url_option
@click.option("--json", "as_json", is_flag=True, help="print the index as JSON")
@click.option("--poll-interval", default=1.0, type=click.FloatRange(min=0.01), hidden=True)
def grid(prompt_file: Path | None, x_axis: str, y_axis: str | None, z_axis: str | None, fixed: tuple[str, ...],
         out: Path | None, cell_px: int, url: str | None, as_json: bool, poll_interval: float) -> None:
    """Render every combination of the axes' values through the daemon into one contact sheet.

    \b
    Examples:
      sidecar grid --prompt-file p003.txt --x loraStrength=0.6,0.8,1.0 --y seed=1,2,3
      sidecar grid --prompt-file p003.txt --x cfg=5,7,9 --y sampler=euler,euler_ancestral --z steps=12,20
      sidecar grid --prompt-file p003.txt --x loraId=none,spyke_plasma_v1 --y seed=1..4 --set steps=12
    """
    base = grid_plan.read_prompt_file(prompt_file) if prompt_file is not None else {}
    for raw in fixed:
        grid_plan.parse_set(raw, base)
    axes = [parse_axis(flag, raw, Path.cwd()) for flag, raw in (("x", x_axis), ("y", y_axis), ("z", z_axis)) if raw]
    folder = out or Path(f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    plan = grid_plan.plan_grid(base, axes, folder, prompt_file)
    settings = current_settings()
    code = asyncio.run(_render(plan, DaemonClient.for_settings(settings, url), cell_px, as_json, poll_interval))
    sys.exit(code)


async def _render(plan: grid_plan.GridPlan, daemon: DaemonClient, cell_px: int, as_json: bool,
                  poll_interval: float) -> int:
    if not as_json:
        shape = " x ".join(f"{len(a.values)} {a.name}" for a in plan.axes)
        click.echo(f"grid: {shape} = {len(plan.cells)} render(s) -> {plan.out}")

    def done(i: int, total: int, cell: grid_plan.GridCell) -> None:
        if not as_json:
            click.echo(f"[{i}/{total}] {cell.label}: {cell.status}" + (f" ({cell.error})" if cell.error else ""))

    def result(cell: grid_plan.GridCell, job: dict[str, Any]) -> None:
        cell.seed = (job.get("params") or {}).get("seed")

    await asyncio.to_thread(plan.out.mkdir, parents=True, exist_ok=True)
    async with daemon as client:
        await render_cells(plan.cells, client, plan.out, body_of=lambda c: c.request, image_name=grid_plan.image_name,
                           on_done=done, on_result=result, poll_interval=poll_interval, window=WINDOW)
    sheet = await asyncio.to_thread(grid_plan.contact_sheet, plan, cell_px)
    index = await asyncio.to_thread(grid_plan.write_index, plan, sheet)
    failed = sum(c.status != "succeeded" for c in plan.cells)
    return report_sheet(index, sheet, failed, len(plan.cells), as_json=as_json)

