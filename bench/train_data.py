"""The captioned training set both trainers of the benchmark read (bench/train.py, and kohya beside it in
bench/train_vs_kohya.py): noise images, since speed and memory do not depend on what they show."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

TRIGGER = "spyke_plasma_v1"


def dataset(folder: Path, size: int, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.effect_noise((size, size), 40 + 10 * i).convert("RGB").save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"{TRIGGER}, full body, standing, plain background\n")
    return folder
