"""Small generated images for the dataset tool tests: distinct "figures" on a plain background (each
index draws a different set of shapes, so perceptual hashes differ), a reference sheet with figures
side by side, and a ready captioned training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TRIGGER = "spyke_plasma_v1"
WHITE = (255, 255, 255)


def figure(index: int, size: int = 512, background=WHITE) -> Image.Image:
    """A different arrangement of coloured shapes per index (a stand-in for one pose/view)."""
    rng = np.random.default_rng(1000 + index)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
    return img


def asymmetric_figure(size: int = 512) -> Image.Image:
    """A figure with a detail on one side only (the 'right bracer'): its mirror is clearly different."""
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    draw.rectangle((size * 0.4, size * 0.2, size * 0.6, size * 0.9), fill=(40, 40, 160))
    draw.ellipse((size * 0.42, size * 0.05, size * 0.58, size * 0.21), fill=(230, 150, 90))
    draw.rectangle((size * 0.62, size * 0.45, size * 0.78, size * 0.55), fill=(200, 30, 30))
    return img


def reference_sheet(path: Path) -> list[tuple[int, int, int, int]]:
    """A 1200x700 sheet: three figures (head + body + a detached sword) on white, and a small label.
    Returns the figures' true bounding boxes (x0, y0, x1, y1) left to right."""
    img = Image.new("RGB", (1200, 700), WHITE)
    draw = ImageDraw.Draw(img)
    boxes = []
    for i, x in enumerate((100, 500, 880)):
        draw.ellipse((x + 40, 60, x + 120, 140), fill=(230, 160, 100))  # head
        draw.rectangle((x + 20, 150, x + 140, 560 + 20 * i), fill=(40 + 60 * i, 60, 150))  # body
        draw.rectangle((x + 150, 300, x + 162, 520), fill=(120, 120, 130))  # sword, 10 px from the body
        boxes.append((x + 20, 60, x + 163, 561 + 20 * i))
    draw.rectangle((560, 660, 580, 668), fill=(0, 0, 0))  # a tiny label mark: not a figure
    img.save(path)
    return boxes


def caption_for(index: int, trigger: str = TRIGGER) -> str:
    framing = ("full body", "upper body", "portrait")[index % 3]
    pose = ("standing", "running", "sitting", "arms crossed")[index % 4]
    return f"{trigger}, {framing}, {pose}, plain white background"


def training_set(folder: Path, count: int = 16, *, captions: bool = True, size: int = 512) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"view_{i:02d}.png"
        figure(i, size).save(path)
        if captions:
            path.with_suffix(".txt").write_text(caption_for(i) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to assert that a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
