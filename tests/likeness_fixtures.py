"""Helpers for the likeness tests: a figure drawn in a colour (the character is red; a stranger is
blue), a project with a reference set, and the tiny likeness model `sidecar models make-tiny` writes
(its features are colours in place, so a red figure is like the red references and a blue one is not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RED, BLUE = (200, 40, 40), (40, 40, 200)


def figure(color: tuple[int, int, int] = RED, dx: int = 0, seed: int = 0, size: tuple[int, int] = (512, 768),
           background: str = "white") -> Image.Image:
    """A head and a body in `color`, shifted `dx` pixels, with a little seeded noise (no two alike)."""
    w, h = size
    im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    cx = w // 2 + dx
    draw.ellipse((cx - 55, h // 8, cx + 55, h // 8 + 110), fill=color)
    draw.rectangle((cx - 75, h // 8 + 120, cx + 75, h * 4 // 5), fill=color)
    noise = np.random.default_rng(seed).integers(-10, 10, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im).astype(int) + noise, 0, 255).astype(np.uint8))


def write_project(root: Path, refs: int = 4, references: str = '["refs/*.png"]') -> list[Path]:
    """character.toml with `references`, and `refs` red figures in refs/."""
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "character.toml").write_text(f'trigger = "spyke_plasma_v1"\nreferences = {references}\n')
    paths = []
    for i, dx in enumerate([0, 20, -20, 10, -10, 5][:refs]):
        path = root / "refs" / f"ref{i}.png"
        figure(RED, dx, seed=i).save(path)
        paths.append(path)
    return paths


def tiny_likeness_models(folder: Path) -> Path:
    from sidecar.likeness.tiny import make_tiny_likeness

    make_tiny_likeness(folder)
    return folder
