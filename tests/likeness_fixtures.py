"""Helpers for the likeness tests: a figure drawn in a colour (the character is red; a stranger is
blue), a project with a reference set, and the tiny likeness model `sidecar models make-tiny` writes
(its features are colours in place, so a red figure is like the red references and a blue one is not)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RED, BLUE = (200, 40, 40), (40, 40, 200)


GREEN = (40, 160, 40)


def figure(color: tuple[int, int, int] = RED, dx: int = 0, seed: int = 0, size: tuple[int, int] = (512, 768),
           background: str = "white", bracer: bool = False) -> Image.Image:
    """A head and a body in `color`, shifted `dx` pixels, with a little seeded noise (no two alike);
    `bracer`: a big green block on the figure's right (the image's right): an asymmetric character."""
    w, h = size
    im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    cx, head, body = w // 2 + dx * w // 512, w * 55 // 512, w * 75 // 512
    draw.ellipse((cx - head, h // 8, cx + head, h // 8 + 2 * head), fill=color)
    draw.rectangle((cx - body, h // 8 + 2 * head + head // 5, cx + body, h * 4 // 5), fill=color)
    if bracer:
        draw.rectangle((cx + body, h // 3, min(w - 1, cx + 3 * body), h * 2 // 3), fill=GREEN)
    noise = np.random.default_rng(seed).integers(-10, 10, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im).astype(int) + noise, 0, 255).astype(np.uint8))


def write_project(root: Path, refs: int = 4, references: str = '["refs/*.png"]', bracer: bool = False) -> list[Path]:
    """character.toml with `references`, and `refs` red figures in refs/."""
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "character.toml").write_text(f'trigger = "spyke_plasma_v1"\nreferences = {references}\n')
    paths = []
    for i, dx in enumerate([0, 20, -20, 10, -10, 5][:refs]):
        path = root / "refs" / f"ref{i}.png"
        figure(RED, dx, seed=i, bracer=bracer).save(path)
        paths.append(path)
    return paths


def add_references(project: Path, refs: int = 4) -> list[Path]:
    """A copy of the example project gains a reference set (character.toml keeps its other keys)."""
    sheet = project / "character.toml"
    text = sheet.read_text() if sheet.is_file() else 'trigger = "spyke_plasma_v1"\n'
    paths = write_project(project, refs)
    sheet.write_text(text + 'references = ["refs/*.png"]\n')
    return paths


class FigureBackendMixin:
    """Mixed into a ScriptedBackend: each render is a figure drawn at the workflow's size, red (the
    character) or blue (a stranger) as `is_character(seed, lora)` says."""

    def draw(self, ctx) -> None:
        nodes = ctx.workflow.values()
        sampler = next(n for n in nodes if n["class_type"] == "KSampler")["inputs"]
        latent = next(n for n in nodes if n["class_type"] == "EmptyLatentImage")["inputs"]
        lora = next((n["inputs"]["lora_name"] for n in nodes if n["class_type"] == "LoraLoader"), None)
        seed = int(sampler["seed"])
        color = RED if self.is_character(seed, lora) else BLUE  # type: ignore[attr-defined]
        figure(color, dx=seed % 7, seed=seed, size=(latent["width"], latent["height"])).save(ctx.output_path)


def staged_step(lora: str | None) -> int | None:
    """The step of a checkpoint staged for a sweep (`sweep--<name>-<run8>-step00000200.safetensors`)."""
    found = re.search(r"step(\d+)", lora or "")
    return int(found.group(1)) if found else None


def tiny_likeness_models(folder: Path) -> Path:
    from sidecar.likeness.tiny import make_tiny_likeness

    make_tiny_likeness(folder)
    return folder
