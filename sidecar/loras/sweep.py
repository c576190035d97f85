"""Checkpoint sweep: the same prompts and seeds rendered with every saved checkpoint of a run,
through the running daemon, into a labelled contact sheet PNG and a JSON index (LORA-02: pick the
best-generalising checkpoint, not necessarily the last).

How a checkpoint becomes a `loraId`: the daemon (and ComfyUI) load LoRAs by file name from their
LoRA folder, so each checkpoint is hard-linked (copied where links are impossible) into that folder
under a name no one else uses, `sweep--<outputName>-<run8>-step00000200.safetensors`, for the
sweep's duration; the links are removed afterwards unless asked to keep them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageDraw, ImageFont

from sidecar.atomic import replacing, write_text, write_with
from sidecar.errors import InvalidField
from sidecar.training.lora_metadata import STAGED_PREFIX as STAGE_PREFIX

HEADER_H = 28
LABEL_W = 260


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
    lora_id: str | None = None  # the staged name the daemon finds it by
    staged: str | None = None  # the staged file, removed after the sweep


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


@dataclass
class SweepPlan:
    run: dict[str, Any]
    prompts: list[str]
    seeds: list[int]
    columns: list[Column]
    out: Path
    loras_dir: Path
    cells: list[Cell] = field(default_factory=list)

    @property
    def rows(self) -> list[tuple[str, int]]:
        return [(p, s) for p in self.prompts for s in self.seeds]


def plan_sweep(run: dict[str, Any], prompts: list[str], seeds: list[int], out: Path, loras_dir: Path,
               baseline: bool = False) -> SweepPlan:
    if run["status"] in ("queued", "running"):
        raise InvalidField(f"Training run {run['id']} is still {run['status']}; sweep it once it has ended "
                           "(generation is refused while training holds the device).", {"run": run["id"]})
    checkpoints = sorted(run.get("checkpoints") or [], key=lambda c: c["step"])
    if not checkpoints:
        raise InvalidField(f"Training run {run['id']} saved no checkpoint to sweep.", {"run": run["id"]})
    tag = f"{run['outputName']}-{run['id'][:8]}"
    columns = [Column("no LoRA", None, None)] if baseline else []
    for c in checkpoints:
        stem = f"{STAGE_PREFIX}{tag}-step{c['step']:08d}"
        columns.append(Column(f"final (step {c['step']})" if c.get("final") else f"step {c['step']}",
                              c["step"], c["path"], lora_id=stem, staged=str(loras_dir / f"{stem}.safetensors")))
    plan = SweepPlan(run, prompts, seeds, columns, out, loras_dir)
    for r, (prompt, seed) in enumerate(plan.rows):
        for ci, col in enumerate(columns):
            plan.cells.append(Cell(r, ci, prompt, seed, col.step, col.lora_id))
    return plan


def stage(plan: SweepPlan) -> None:
    """Make every checkpoint loadable by name: a hard link in the LoRA folder (a copy across disks)."""
    plan.loras_dir.mkdir(parents=True, exist_ok=True)
    for col in plan.columns:
        if col.source is None or col.staged is None:
            continue
        source, target = Path(col.source), Path(col.staged)
        if not source.is_file():
            raise InvalidField(f"Checkpoint {source} is gone; cannot sweep it.", {"file": str(source)})
        if target.exists():
            if target.samefile(source):
                continue
            target.unlink()  # a stale staging of our own (the sweep-- prefix is ours)
        try:
            os.link(source, target)
        except OSError:
            with replacing(target) as tmp:  # no hard links on this file system
                shutil.copyfile(source, tmp)


def unstage(plan: SweepPlan) -> None:
    for col in plan.columns:
        if col.staged:
            with contextlib.suppress(FileNotFoundError):
                Path(col.staged).unlink()


class Client(Protocol):
    async def submit(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def image(self, job_id: str) -> bytes: ...

    async def wait(self, job_id: str, *, poll_interval: float, on_progress=None) -> dict[str, Any]: ...


class Reporter(Protocol):
    def cell_done(self, done: int, total: int, cell: Cell) -> None: ...


async def render(plan: SweepPlan, client: Client, reporter: Reporter, job: dict[str, Any],
                 poll_interval: float = 1.0) -> None:
    """Submit every cell (the daemon queues them FIFO), then collect them in order."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "images").mkdir(exist_ok=True)
    for cell in plan.cells:
        body = {**job, "prompt": cell.prompt, "seed": cell.seed}
        if cell.lora_id:
            body["loraId"] = cell.lora_id
        submitted = await client.submit(body)
        cell.job_id, cell.status = submitted["id"], submitted["status"]
    for i, cell in enumerate(plan.cells, 1):
        assert cell.job_id is not None
        result = await client.wait(cell.job_id, poll_interval=poll_interval)
        cell.status = result["status"]
        if cell.status == "succeeded":
            name = f"images/r{cell.row:02d}-s{cell.seed}-{'base' if cell.step is None else cell.step}.png"
            (plan.out / name).write_bytes(await client.image(cell.job_id))
            cell.image = name
        else:
            err = result.get("error") or {}
            cell.error = f"{err.get('code', cell.status)}: {err.get('message', '')}".strip()
        reporter.cell_done(i, len(plan.cells), cell)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def contact_sheet(plan: SweepPlan, cell_px: int = 256) -> Path:
    """A grid: one column per checkpoint (labelled with its step), one row per prompt x seed."""
    rows, cols = len(plan.rows), len(plan.columns)
    sheet = Image.new("RGB", (LABEL_W + cols * cell_px, HEADER_H + rows * cell_px), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(16), _font(12)
    title = f"{plan.run['outputName']} ({plan.run['id'][:8]})"
    draw.text((8, 6), title, fill="black", font=font)
    for ci, col in enumerate(plan.columns):
        draw.text((LABEL_W + ci * cell_px + 8, 6), col.label, fill="black", font=font)
    for r, (prompt, seed) in enumerate(plan.rows):
        y = HEADER_H + r * cell_px
        lines = _wrap(prompt, 34)[:8] + [f"seed {seed}"]
        for li, line in enumerate(lines):
            draw.text((8, y + 8 + li * 16), line, fill="black", font=small)
    for cell in plan.cells:
        x, y = LABEL_W + cell.col * cell_px, HEADER_H + cell.row * cell_px
        if cell.image:
            with Image.open(plan.out / cell.image) as im:
                thumb = im.convert("RGB")
            thumb.thumbnail((cell_px, cell_px))
            sheet.paste(thumb, (x + (cell_px - thumb.width) // 2, y + (cell_px - thumb.height) // 2))
        else:
            draw.rectangle((x + 2, y + 2, x + cell_px - 3, y + cell_px - 3), fill=(230, 230, 230))
            for li, line in enumerate(_wrap(cell.error or cell.status, 30)[:6]):
                draw.text((x + 8, y + 8 + li * 16), line, fill=(160, 0, 0), font=small)
        draw.rectangle((x, y, x + cell_px - 1, y + cell_px - 1), outline=(200, 200, 200))
    path = plan.out / "contact-sheet.png"
    write_with(path, lambda fh: sheet.save(fh, format="PNG"))
    return path


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def write_index(plan: SweepPlan, sheet: Path) -> Path:
    index = {
        "run": plan.run["id"],
        "outputName": plan.run["outputName"],
        "triggerWord": plan.run.get("triggerWord"),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sheet": sheet.name,
        "prompts": plan.prompts,
        "seeds": plan.seeds,
        "columns": [{"label": c.label, "step": c.step, "checkpoint": c.source, "loraId": c.lora_id}
                    for c in plan.columns],
        "cells": [asdict(c) for c in plan.cells],
    }
    path = plan.out / "index.json"
    write_text(path, json.dumps(index, indent=2))
    return path
