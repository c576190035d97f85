"""The `--repeat K` consistency report: a contact sheet of the K versions and pairwise similarity figures,
so the artist can see whether the character's asymmetric details (right bracer, left knee pauldron)
hold across same-seed runs. Written to `output/ch-XX/consistency/`, never into raw/ (the overlay stage
takes every PNG there).
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import write_atomic
from pipeline_stage.stage import PageResult

THUMB_HEIGHT = 384
GAP = 8
LABEL_HEIGHT = 22
WINDOW = 7  # SSIM window, pixels
GRID = 3  # regions per side for the worst-region figure
REGION_NAMES = [["top-left", "top", "top-right"], ["left", "centre", "right"],
                ["bottom-left", "bottom", "bottom-right"]]


def _box_mean(x: np.ndarray, k: int = WINDOW) -> np.ndarray:
    """Mean over every k x k window (valid positions), via a summed-area table."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity per window of two grey images (float, 0-255), uniform window."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _box_mean(a), _box_mean(b)
    var_a = _box_mean(a * a) - mu_a**2
    var_b = _box_mean(b * b) - mu_b**2
    cov = _box_mean(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def compare(a: Image.Image, b: Image.Image) -> dict[str, Any]:
    """`pixel`: 1 - mean absolute RGB difference / 255; `ssim`: mean structural similarity;
    `worstRegion`: the ninth of the frame where the two agree least, and its SSIM."""
    if a.size != b.size:
        b = b.resize(a.size, Image.Resampling.BILINEAR)
    ra, rb = np.asarray(a.convert("RGB"), dtype=np.float64), np.asarray(b.convert("RGB"), dtype=np.float64)
    pixel = 1.0 - float(np.abs(ra - rb).mean()) / 255.0
    ga, gb = np.asarray(a.convert("L"), dtype=np.float64), np.asarray(b.convert("L"), dtype=np.float64)
    smap = ssim_map(ga, gb)
    h, w = smap.shape
    worst = (1.0, "centre")
    for row, col in itertools.product(range(GRID), range(GRID)):
        cell = smap[row * h // GRID:(row + 1) * h // GRID, col * w // GRID:(col + 1) * w // GRID]
        if cell.size and float(cell.mean()) < worst[0]:
            worst = (float(cell.mean()), REGION_NAMES[row][col])
    return {"pixel": round(pixel, 4), "ssim": round(float(smap.mean()), 4),
            "worstRegion": {"name": worst[1], "ssim": round(worst[0], 4)}}


def contact_sheet(images: list[tuple[str, Image.Image]]) -> Image.Image:
    thumbs = []
    for label, img in images:
        scale = THUMB_HEIGHT / img.height
        thumbs.append((label, img.convert("RGB").resize((max(1, round(img.width * scale)), THUMB_HEIGHT),
                                                        Image.Resampling.LANCZOS)))
    width = sum(t.width for _, t in thumbs) + GAP * (len(thumbs) + 1)
    sheet = Image.new("RGB", (width, THUMB_HEIGHT + LABEL_HEIGHT + 2 * GAP), "white")
    draw = ImageDraw.Draw(sheet)
    x = GAP
    for label, thumb in thumbs:
        sheet.paste(thumb, (x, GAP))
        draw.text((x + 2, GAP + THUMB_HEIGHT + 4), label, fill="black")
        x += thumb.width + GAP
    return sheet


@dataclass(frozen=True)
class ConsistencyReport:
    sheet: Path
    report: Path
    figures: dict[str, Any]


def write_report(project: Project, page: Page, made: list[PageResult]) -> ConsistencyReport:
    """Contact sheet + figures for the versions just made (at least two)."""
    images = []
    for item in made:
        with Image.open(item.published.image) as img:
            images.append((item.published.version, item.entry.seed, img.convert("RGB")))
    pairs = []
    for (va, _, ia), (vb, _, ib) in itertools.combinations(images, 2):
        pairs.append({"a": va, "b": vb, **compare(ia, ib)})
    ssims = [p["ssim"] for p in pairs]
    pixels = [p["pixel"] for p in pairs]
    versions = [v for v, _, _ in images]
    stem = f"{page.stem}_v{versions[0]}-v{versions[-1]}"
    folder = project.consistency_dir(page.chapter)
    sheet_path, report_path = folder / f"{stem}.png", folder / f"{stem}.json"
    figures = {
        "page": page.stem,
        "versions": versions,
        "seeds": [s for _, s, _ in images],
        "images": [project.relative(r.published.image) for r in made],
        "pairs": pairs,
        "meanSsim": round(sum(ssims) / len(ssims), 4),
        "minSsim": min(ssims),
        "meanPixel": round(sum(pixels) / len(pixels), 4),
        "sheet": project.relative(sheet_path),
    }
    buf = io.BytesIO()
    contact_sheet([(f"v{v}  seed {s}", img) for v, s, img in images]).save(buf, "PNG")
    write_atomic(sheet_path, buf.getvalue())
    write_atomic(report_path, (json.dumps(figures, indent=2) + "\n").encode())
    return ConsistencyReport(sheet_path, report_path, figures)


def summary_lines(report: ConsistencyReport, project: Project) -> list[str]:
    f = report.figures
    lines = [f"{f['page']} consistency over v{f['versions'][0]}-v{f['versions'][-1]}: mean SSIM {f['meanSsim']:.3f} "
             f"(min {f['minSsim']:.3f}), mean pixel similarity {f['meanPixel']:.3f}; "
             f"sheet {project.relative(report.sheet)}"]
    for p in f["pairs"]:
        lines.append(f"  v{p['a']} vs v{p['b']}: SSIM {p['ssim']:.3f}, pixel {p['pixel']:.3f}, "
                     f"least alike {p['worstRegion']['name']} ({p['worstRegion']['ssim']:.3f})")
    return lines
