"""Checkpoint sweep: the same prompts and seeds rendered with every saved checkpoint of a run,
through the running daemon, into a labelled contact sheet PNG and a JSON index (LORA-02: pick the
best-generalising checkpoint, not necessarily the last). It is a grid whose columns are the
checkpoints: rendered and drawn with the grids' code (`sidecar.grids.render`, `sidecar.contact_sheet`).

How a checkpoint becomes a `loraId`: the daemon stages it (`POST /loras/{id}/stage`: linked into its
LoRA folder under a `sweep--...` name no installed LoRA uses) for the sweep's duration, and removes the
stagings afterwards (`POST /loras/{id}/unstage`) unless asked to keep them. This tool touches no file of
the daemon's: it asks over HTTP, renders, and writes its own folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sidecar.atomic import write_text
from sidecar.errors import InvalidField, SidecarError
from sidecar.grids.render import render_cells
from sidecar.contact_sheet import SheetCell, draw_sheet, wrap, write_sheet


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidField(f"Cannot read the prompts file {path}: {exc.strerror}.", {"field": "prompts"}) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InvalidField(f"The prompts file {path} holds no prompt (one per line).", {"field": "prompts"})
    return prompts


def parse_seeds(raw: str) -> list[int]:
    try:
        seeds = [int(s) for s in raw.replace(" ", "").split(",") if s]
    except ValueError:
        raise InvalidField(f"--seeds must be integers separated by commas, got {raw!r}.", {"field": "seeds"}) from None
    if not seeds or any(s < 0 for s in seeds):
        raise InvalidField(f"--seeds must list at least one seed >= 0, got {raw!r}.", {"field": "seeds"})
    return seeds


@dataclass
class Column:
    label: str  # "step 200", "final", "no LoRA"
    step: int | None
    source: str | None  # the checkpoint file (None for the no-LoRA baseline)
    lora_id: str | None = None  # the staged name the daemon finds it by, once staged
    # The samples the trainer drew at this step (the run's checkpoints list them): shown beside the sweep's renders.
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Cell:
    row: int
    col: int
    prompt: str
    seed: int
    step: int | None
    lora_id: str | None
    job_id: str | None = None
    status: str = "pending"
    image: str | None = None  # relative to the sweep folder
    error: str | None = None
    likeness: dict[str, Any] | None = None  # the daemon's judge on the image: score, verdict, scorer, weights


@dataclass
class SweepPlan:
    run: dict[str, Any]
    prompts: list[str]
    seeds: list[int]
    columns: list[Column]
    out: Path
    cells: list[Cell] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    unranked: str | None = None  # why there is no ranking (no references, no weights)

    @property
    def rows(self) -> list[tuple[str, int]]:
        return [(p, s) for p in self.prompts for s in self.seeds]


def plan_sweep(run: dict[str, Any], prompts: list[str], seeds: list[int], out: Path,
               baseline: bool = False) -> SweepPlan:
    if run["status"] in ("queued", "running"):
        raise InvalidField(f"Training run {run['id']} is still {run['status']}; sweep it once it has ended "
                           "(generation is refused while training holds the device).", {"run": run["id"]})
    checkpoints = sorted(run.get("checkpoints") or [], key=lambda c: c["step"])
    if not checkpoints:
        raise InvalidField(f"Training run {run['id']} saved no checkpoint to sweep.", {"run": run["id"]})
    columns = [Column("no LoRA", None, None)] if baseline else []
    for c in checkpoints:
        columns.append(Column(f"final (step {c['step']})" if c.get("final") else f"step {c['step']}",
                              c["step"], c["path"], samples=list(c.get("samples") or [])))
    plan = SweepPlan(run, prompts, seeds, columns, out)
    for r, (prompt, seed) in enumerate(plan.rows):
        for ci, col in enumerate(columns):
            plan.cells.append(Cell(r, ci, prompt, seed, col.step, None))
    return plan


async def stage(plan: SweepPlan, client: Client, loras_dir: str | None = None) -> None:
    """Have the daemon make every checkpoint loadable by name; each column and cell learns its loraId."""
    for ci, col in enumerate(plan.columns):
        if col.step is None:
            continue
        staged = await client.stage(plan.run["id"], col.step, loras_dir)
        col.lora_id = staged["loraId"]
        for cell in plan.cells:
            if cell.col == ci:
                cell.lora_id = col.lora_id


async def unstage(plan: SweepPlan, client: Client, loras_dir: str | None = None) -> None:
    """Remove the stagings; a daemon gone meanwhile leaves them (hidden from GET /loras, replaced next time)."""
    if any(col.lora_id for col in plan.columns):
        with contextlib.suppress(SidecarError):
            await client.unstage(plan.run["id"], loras_dir)


class Client(Protocol):
    async def stage(self, run_id: str, step: int, loras_dir: str | None) -> dict[str, Any]: ...

    async def unstage(self, run_id: str, loras_dir: str | None) -> dict[str, Any]: ...

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def image(self, job_id: str) -> bytes: ...

    async def wait(self, job_id: str, *, poll_interval: float, on_progress=None) -> dict[str, Any]: ...

    async def cancel_quietly(self, job_id: str) -> None: ...

    async def score_likeness(self, job_ids: list[str]) -> list[dict[str, Any]]: ...


class Reporter(Protocol):
    def cell_done(self, done: int, total: int, cell: Cell) -> None: ...


async def render(plan: SweepPlan, client: Client, reporter: Reporter, job: dict[str, Any],
                 poll_interval: float = 1.0) -> None:
    """Every cell through the daemon (FIFO, a bounded number waiting at once), images into the folder."""
    plan.out.mkdir(parents=True, exist_ok=True)

    def body_of(cell: Cell) -> dict[str, Any]:
        body = {**job, "prompt": cell.prompt, "seed": cell.seed}
        if cell.lora_id:
            body["loraId"] = cell.lora_id
        return body

    def image_name(cell: Cell) -> str:
        return f"images/r{cell.row:02d}-s{cell.seed}-{'base' if cell.step is None else cell.step}.png"

    await render_cells(plan.cells, client, plan.out, body_of=body_of, image_name=image_name, source="sweep",
                       on_done=reporter.cell_done, poll_interval=poll_interval)


BROKEN = "invalid_field"  # the daemon's answer for an image it cannot read


async def score(plan: SweepPlan, client: Client) -> None:
    """Each rendered cell's likeness from the daemon, then the ranking. One request for the lot; if one
    image is broken (refused), each cell alone, so the broken ones count as failures and the rest score."""
    done = [c for c in plan.cells if c.status == "succeeded" and c.job_id]
    if not done:
        plan.unranked = "no image rendered"
        return
    try:
        try:
            results = await client.score_likeness([c.job_id for c in done])  # type: ignore[misc]
            for cell, result in zip(done, results, strict=True):
                cell.likeness = result["likeness"]
        except SidecarError as exc:
            if exc.code != BROKEN:
                raise
            for cell in done:
                try:
                    cell.likeness = (await client.score_likeness([cell.job_id]))[0]["likeness"]  # type: ignore[list-item]
                except SidecarError as one:
                    if one.code != BROKEN:
                        raise
                    cell.likeness, cell.error = None, f"broken image: {one.message}"
    except SidecarError as exc:
        plan.unranked = f"{exc.code}: {exc.message}"
        return
    plan.ranking = rank(plan)


def rank(plan: SweepPlan) -> list[dict[str, Any]]:
    """Checkpoints best first: mean likeness over all their cells (failed or broken: 0), then the share
    judged `same`, then the later step. The no-LoRA baseline is shown, never ranked."""
    table = []
    for ci, col in enumerate(plan.columns):
        if col.step is None:
            continue
        cells = [c for c in plan.cells if c.col == ci]
        scores = [c.likeness["score"] if c.likeness else 0.0 for c in cells]
        same = sum(1 for c in cells if c.likeness and c.likeness["verdict"] == "same")
        table.append({"label": col.label, "step": col.step, "checkpoint": col.source,
                      "meanScore": round(sum(scores) / len(cells), 4) if cells else 0.0,
                      "shareSame": round(same / len(cells), 4) if cells else 0.0,
                      "failures": sum(1 for c in cells if c.likeness is None), "images": len(cells)})
    table.sort(key=lambda r: (-r["meanScore"], -r["shareSame"], -r["step"]))
    return [{"rank": i + 1, **r} for i, r in enumerate(table)]


def pick(plan: SweepPlan) -> dict[str, Any] | None:
    return plan.ranking[0] if plan.ranking else None


def contact_sheet(plan: SweepPlan, cell_px: int = 256) -> Path:
    """A grid: one column per checkpoint (labelled with its step, and its rank once scored), one row per
    prompt x seed; each image captioned with its likeness."""
    rows = [wrap(prompt, 34)[:8] + [f"seed {seed}"] for prompt, seed in plan.rows]
    cells = [SheetCell(c.row, c.col, plan.out / c.image if c.image else None, c.error or c.status,
                       caption=f"{c.likeness['score']:.2f} {c.likeness['verdict']}" if c.likeness else None)
             for c in plan.cells]
    ranks = {r["step"]: r for r in plan.ranking}
    labels = [f"{c.label}  #{ranks[c.step]['rank']} {ranks[c.step]['meanScore']:.2f}" if c.step in ranks else c.label
              for c in plan.columns]
    title = f"{plan.run['outputName']} ({plan.run['id'][:8]})"
    best = pick(plan)
    if best is not None:
        title += f"  pick: {best['label']} (mean likeness {best['meanScore']:.2f}, {best['shareSame']:.0%} same)"
    sheet = draw_sheet(title, labels, rows, cells, cell_px)
    return write_sheet(plan.out / "contact-sheet.png", sheet)


def write_index(plan: SweepPlan, sheet: Path, strength: float | None = None) -> Path:
    index = {
        "strength": strength,  # the LoRA strength rendered at (null: the daemon's default); publish recommends it
        "run": plan.run["id"],
        "outputName": plan.run["outputName"],
        "triggerWord": plan.run.get("triggerWord"),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sheet": sheet.name,
        "prompts": plan.prompts,
        "seeds": plan.seeds,
        "columns": [{"label": c.label, "step": c.step, "checkpoint": c.source, "loraId": c.lora_id,
                     "samples": c.samples} for c in plan.columns],
        "cells": [asdict(c) for c in plan.cells],
        "ranking": plan.ranking,
        "pick": pick(plan),
        "unranked": plan.unranked,
    }
    path = plan.out / "index.json"
    write_text(path, json.dumps(index, indent=2))
    return path
