"""A grid's plan: the base request (a prompt file's text and front matter, `--set` values), its axes,
and one cell per combination; then its sheet and `index.json` once rendered.

Rows are y values (repeated per z value: z is the outer loop, each row labelled with both), columns
are x values. Every cell is one ordinary job; the index names each cell's axis values, the request
sent, the job, its seed and its image, so any cell can be rendered again by itself.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from sidecar.atomic import write_text
from sidecar.errors import InvalidField
from sidecar.grids.axes import Axis, apply, check_value, resolve_name
from sidecar.contact_sheet import SheetCell, draw_sheet, wrap, write_sheet

MAX_CELLS = 1000
FENCE = "+++"


@dataclass
class GridCell:
    row: int
    col: int
    coords: dict[str, dict[str, Any]]  # {"x": {"loraStrength": 0.6}, "y": {"seed": 1}}
    request: dict[str, Any]
    job_id: str | None = None
    status: str = "pending"
    image: str | None = None
    error: str | None = None
    seed: int | None = None

    @property
    def label(self) -> str:
        return " · ".join(f"{k}={v}" for axis in self.coords.values() for k, v in axis.items())


@dataclass
class GridPlan:
    base: dict[str, Any]
    axes: list[Axis]
    out: Path
    prompt_file: Path | None = None
    cells: list[GridCell] = field(default_factory=list)

    def axis(self, flag: str) -> Axis | None:
        return next((a for a in self.axes if a.flag == flag), None)

    @property
    def columns(self) -> list[str]:
        x = self.axis("x")
        return [x.label(v) for v in x.values] if x else [""]

    @property
    def rows(self) -> list[list[str]]:
        y, z = self.axis("y"), self.axis("z")
        ys = [y.label(v) for v in y.values] if y else [""]
        zs = [z.label(v) for v in z.values] if z else [None]
        return [[line for line in (zl, yl) if line] or [""] for zl in zs for yl in ys]


def read_prompt_file(path: Path) -> dict[str, Any]:
    """A page prompt file as a POST /jobs body: its text, and its TOML front matter between `+++` lines
    (the same keys as the pipeline's: seed, steps, loraId, width, poseImage relative to the file...)."""
    try:
        raw = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except OSError as exc:
        raise InvalidField(f"Cannot read the prompt file {path}: {exc.strerror}.",
                           {"field": "--prompt-file", "value": str(path)}) from None
    lines = raw.splitlines(keepends=True)
    front: dict[str, Any] = {}
    if lines and lines[0].strip() == FENCE:
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == FENCE), None)
        if end is None:
            raise InvalidField(f"The front matter of {path} opens with {FENCE} but is never closed.",
                               {"field": "--prompt-file", "value": str(path)})
        try:
            front = tomllib.loads("".join(lines[1:end]))
        except tomllib.TOMLDecodeError as exc:
            raise InvalidField(f"The front matter of {path} is not valid TOML: {exc}.",
                               {"field": "--prompt-file", "value": str(path)}) from None
        raw = "".join(lines[end + 1:])
    body: dict[str, Any] = {}
    text = raw.strip()
    if text:
        body["prompt"] = text
    for key, value in front.items():
        where = f"{path.name} front matter {key}"
        name = resolve_name(key, where)
        if name == "loraId" and value == "":
            value = "none"  # TOML has no null: "" switches the LoRA off, as in the pipeline's front matter
        apply(body, name, check_value(name, value, where, path.parent))
    return body


def parse_set(raw: str, base: dict[str, Any]) -> None:
    """`--set steps=8`: one fixed parameter on every cell."""
    key, sep, value = raw.partition("=")
    if not sep:
        raise InvalidField(f"--set must be NAME=VALUE, got {raw!r}.", {"field": "--set", "value": raw})
    name = resolve_name(key.strip(), "--set")
    apply(base, name, check_value(name, value.strip(), f"--set {name}", Path.cwd()))


def plan_grid(base: dict[str, Any], axes: list[Axis], out: Path, prompt_file: Path | None = None) -> GridPlan:
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise InvalidField(f"Each parameter can be on one axis only; got {', '.join(names)}.", {"field": "axes"})
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_CELLS:
        raise InvalidField(f"The grid has {count} cells; at most {MAX_CELLS} are rendered in one grid.",
                           {"field": "axes", "limit": MAX_CELLS, "value": count})
    if "prompt" not in base and "prompt" not in names:
        raise InvalidField("A grid needs a prompt: --prompt-file FILE (or a prompt axis, or --set prompt=...).",
                           {"field": "--prompt-file"})
    plan = GridPlan(dict(base), axes, out, prompt_file)
    by_flag = {a.flag: a for a in axes}
    xs = list(enumerate(by_flag["x"].values)) if "x" in by_flag else [(0, None)]
    ys = list(enumerate(by_flag["y"].values)) if "y" in by_flag else [(0, None)]
    zs = list(enumerate(by_flag["z"].values)) if "z" in by_flag else [(0, None)]
    for (zi, zv), (yi, yv), (xi, xv) in product(zs, ys, xs):
        request = json.loads(json.dumps(base))  # a copy per cell (resolution is a nested dict)
        coords: dict[str, dict[str, Any]] = {}
        for flag, value in (("x", xv), ("y", yv), ("z", zv)):
            if flag in by_flag:
                axis = by_flag[flag]
                apply(request, axis.name, value)
                coords[flag] = {axis.name: value}
        plan.cells.append(GridCell(row=zi * len(ys) + yi, col=xi, coords=coords, request=request))
    return plan


def image_name(cell: GridCell) -> str:
    return f"images/r{cell.row:03d}-c{cell.col:03d}.png"


def contact_sheet(plan: GridPlan, cell_px: int = 256) -> Path:
    title = plan.prompt_file.name if plan.prompt_file else "grid"
    prompt = plan.base.get("prompt")
    if prompt:
        title = f"{title}: {wrap(str(prompt), 80)[0]}"
    cells = [SheetCell(c.row, c.col, plan.out / c.image if c.image else None, c.error or c.status)
             for c in plan.cells]
    return write_sheet(plan.out / "contact-sheet.png", draw_sheet(title, plan.columns, plan.rows, cells, cell_px))


def write_index(plan: GridPlan, sheet: Path) -> Path:
    index = {
        "kind": "grid",
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "promptFile": str(plan.prompt_file) if plan.prompt_file else None,
        "sheet": sheet.name,
        "base": plan.base,
        "axes": {a.flag: {"name": a.name, "values": list(a.values), "labels": [a.label(v) for v in a.values]}
                 for a in plan.axes},
        "columns": plan.columns,
        "rows": [" · ".join(r) for r in plan.rows],
        "cells": [{"row": c.row, "col": c.col, "label": c.label, **c.coords, "request": c.request,
                   "jobId": c.job_id, "status": c.status, "seed": c.seed, "image": c.image, "error": c.error}
                  for c in plan.cells],
    }
    path = plan.out / "index.json"
    write_text(path, json.dumps(index, indent=2))
    return path
