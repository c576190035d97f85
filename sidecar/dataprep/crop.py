"""Cutting training images out of a reference sheet: the regions TOML the artist edits, finding the
figures on a plain background (`--auto`), and fitting each crop to a square (pad or crop).

Plans are computed and validated in memory first; files are written only when every region is good.
"""

from __future__ import annotations

import re
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidecar.dataprep.files import open_image, save_png, write_text
from sidecar.errors import DatasetInvalid

Fit = Literal["pad", "crop"]
HEX_COLOUR = r"^#[0-9a-fA-F]{6}$"
MAX_GRID = 256  # detection runs on a grid of at most 256 cells a side: fast, and figures are far bigger


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="output file name, no extension")
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class RegionsFile(BaseModel):
    """The TOML the artist edits: `sheet`, `background` and one `[[region]]` table per crop."""

    model_config = ConfigDict(extra="forbid")

    sheet: str | None = None
    background: str | None = Field(None, pattern=HEX_COLOUR)
    region: list[Region] = Field(min_length=1)


@dataclass
class Detection:
    background: tuple[int, int, int]
    regions: list[Region]
    dropped: int = 0  # components too small to be a figure (labels, specks)


@dataclass
class CropPlan:
    region: Region
    target: Path
    image: Image.Image
    warnings: list[str] = field(default_factory=list)


# -- the regions file ---------------------------------------------------------------------------

def load_regions(path: Path, sheet_size: tuple[int, int]) -> RegionsFile:
    """Parse and check every region against the sheet; errors name the file and the region."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetInvalid(f"The regions file {path} does not exist (write one with --auto).",
                             {"file": str(path)}) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DatasetInvalid(f"{path} is not a valid TOML file: {exc}.", {"file": str(path)}) from None
    try:
        regions = RegionsFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _toml_location(err["loc"], raw)
        raise DatasetInvalid(f"{path}: {where}: {err['msg']}.", {"file": str(path), "location": where}) from None
    width, height = sheet_size
    seen: set[str] = set()
    for r in regions.region:
        if r.name in seen:
            raise DatasetInvalid(f"{path}: region {r.name!r} appears twice; each name is one output file.",
                                 {"file": str(path), "region": r.name})
        seen.add(r.name)
        if r.x + r.width > width or r.y + r.height > height:
            raise DatasetInvalid(
                f"{path}: region {r.name!r} ({r.x},{r.y} {r.width}x{r.height}) reaches past the sheet's "
                f"{width}x{height} pixels.",
                {"file": str(path), "region": r.name, "sheet": [width, height]},
            )
    return regions


def _toml_location(loc: tuple, raw: dict) -> str:
    if len(loc) >= 2 and loc[0] == "region" and isinstance(loc[1], int):
        try:
            name = raw["region"][loc[1]].get("name", f"#{loc[1] + 1}")
        except (KeyError, IndexError, AttributeError):
            name = f"#{loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:])
        return f"region {name!r}" + (f" {rest}" if rest else "")
    return ".".join(str(p) for p in loc) or "file"


def render_regions(regions: list[Region], sheet: Path, background: tuple[int, int, int]) -> str:
    """TOML for the artist: a comment saying what to do, then one table per region."""
    lines = [
        f"# Regions of {sheet.name} for `sidecar dataset crop` (pixels, origin top-left).",
        "# Found automatically: adjust x/y/width/height, rename or delete [[region]] blocks, then run",
        f"#   sidecar dataset crop {sheet.name} --regions <this file> --out DIR",
        f'sheet = "{sheet.name}"',
        f'background = "{to_hex(background)}"',
    ]
    for r in regions:
        lines += ["", "[[region]]", f'name = "{r.name}"', f"x = {r.x}", f"y = {r.y}",
                  f"width = {r.width}", f"height = {r.height}"]
    return "\n".join(lines) + "\n"


def write_regions(path: Path, regions: list[Region], sheet: Path, background: tuple[int, int, int]) -> None:
    write_text(path, render_regions(regions, sheet, background))


# -- colours --------------------------------------------------------------------------------------

def to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def parse_hex(value: str) -> tuple[int, int, int]:
    if not re.match(HEX_COLOUR, value):
        raise DatasetInvalid(f"{value!r} is not a colour like #ffffff.", {"value": value})
    return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """The sheet's background: the median of its outermost pixels (a sheet's edge is background)."""
    a = np.asarray(img.convert("RGB"))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))  # type: ignore[return-value]


# -- finding figures ------------------------------------------------------------------------------

def detect_regions(img: Image.Image, name_prefix: str, *, tolerance: int = 24, margin: int = 8,
                   min_share: float = 0.05) -> Detection:
    """Figures = groups of non-background pixels separated by plain background.

    Pixels further than `tolerance` from the border colour are foreground; nearby pieces (a sword
    held apart, loose hair) are joined by growing the mask by about 1% of the sheet before labelling.
    Components under `min_share` of the largest one (labels, specks) are dropped.
    """
    bg = border_colour(img)
    a = np.asarray(img.convert("RGB")).astype(np.int16)
    mask = (np.abs(a - np.array(bg, dtype=np.int16)).max(axis=2) > tolerance)
    h, w = mask.shape
    cell = max(1, -(-max(h, w) // MAX_GRID))
    grid = _pool_any(mask, cell)
    gap_cells = max(1, round(0.01 * min(h, w) / cell))
    labels, count = _label(_dilate(grid, gap_cells))

    boxes: list[tuple[int, int, int, int]] = []
    for label in range(1, count + 1):
        ys, xs = np.nonzero(labels == label)
        # Back to pixels, then tighten to the real foreground (the grown mask overshoots).
        y0, y1 = ys.min() * cell, min(h, (ys.max() + 1) * cell)
        x0, x1 = xs.min() * cell, min(w, (xs.max() + 1) * cell)
        sub = mask[y0:y1, x0:x1]
        if not sub.any():
            continue
        rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
        boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
    if not boxes:
        return Detection(bg, [], 0)
    largest = max((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    kept = [b for b in boxes if (b[2] - b[0]) * (b[3] - b[1]) >= min_share * largest]
    regions = []
    for i, (x0, y0, x1, y1) in enumerate(_reading_order(kept), start=1):
        x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
        x1, y1 = min(w, x1 + margin), min(h, y1 + margin)
        regions.append(Region(name=f"{name_prefix}_{i:02d}", x=int(x0), y=int(y0),
                              width=int(x1 - x0), height=int(y1 - y0)))
    return Detection(bg, regions, len(boxes) - len(kept))


def _pool_any(mask: np.ndarray, cell: int) -> np.ndarray:
    h, w = mask.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((gh * cell, gw * cell), dtype=bool)
    padded[:h, :w] = mask
    return padded.reshape(gh, cell, gw, cell).any(axis=(1, 3))


def _dilate(grid: np.ndarray, r: int) -> np.ndarray:
    out = grid.copy()
    for axis in (0, 1):
        grown = out.copy()
        for s in range(1, r + 1):
            fwd = np.zeros_like(out)
            back = np.zeros_like(out)
            if axis == 0:
                fwd[s:] = out[:-s]
                back[:-s] = out[s:]
            else:
                fwd[:, s:] = out[:, :-s]
                back[:, :-s] = out[:, s:]
            grown |= fwd | back
        out = grown
    return out


def _label(grid: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labelling by breadth-first search (the grid is at most 256x256)."""
    labels = np.zeros(grid.shape, dtype=np.int32)
    gh, gw = grid.shape
    count = 0
    for y, x in zip(*np.nonzero(grid)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < gh and 0 <= nx < gw and grid[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels, count


def _reading_order(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Rows top to bottom (boxes overlapping vertically share a row), left to right within a row."""
    rows: list[list[tuple[int, int, int, int]]] = []
    for box in sorted(boxes, key=lambda b: b[1]):
        for row in rows:
            top, bottom = min(b[1] for b in row), max(b[3] for b in row)
            if box[1] < bottom and box[3] > top:
                row.append(box)
                break
        else:
            rows.append([box])
    return [b for row in rows for b in sorted(row, key=lambda b: b[0])]


# -- cropping -------------------------------------------------------------------------------------

def fit_square(img: Image.Image, size: int, mode: Fit, background: tuple[int, int, int]) -> Image.Image:
    """`pad`: the whole crop, scaled to fit, centred on a background square (nothing is cut off).
    `crop`: scaled to cover the square, centre cut (fills the frame, may cut head or feet)."""
    w, h = img.size
    if mode == "pad":
        scale = size / max(w, h)
        resized = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size, size), background)
        canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
        return canvas
    scale = size / min(w, h)
    resized = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.LANCZOS)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def plan_crops(sheet: Image.Image, regions: list[Region], out_dir: Path, *, size: int, fit: Fit,
               background: tuple[int, int, int]) -> list[CropPlan]:
    plans = []
    for r in regions:
        piece = sheet.crop((r.x, r.y, r.x + r.width, r.y + r.height))
        warnings = []
        if size:
            if max(r.width, r.height) * 2 < size:
                warnings.append(f"{r.name}: {r.width}x{r.height} px is upscaled more than 2x to {size}; "
                                "it will look soft")
            piece = fit_square(piece, size, fit, background)
        plans.append(CropPlan(r, out_dir / f"{r.name}.png", piece, warnings))
    return plans


def write_crops(plans: list[CropPlan]) -> None:
    for plan in plans:
        save_png(plan.image, plan.target)


def read_sheet(path: Path) -> Image.Image:
    return open_image(path, bounded=False)  # the artist's source photos: PIL's bomb bound only
