"""Horizontal flips of a training set: `front.png` -> `front_flip.png`, with the source's caption plus
a tag (`mirrored` by default) because a mirror swaps the character's asymmetric details.

Existing flips are kept (the artist may have edited their captions); flips are never flipped again.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageOps

from sidecar.dataprep.files import add_tag, flip_path, is_flip, open_image, require_dir, save_png, write_text
from sidecar.dataprep.kohya_layout import caption_path, list_images, read_caption


@dataclass
class FlipPlan:
    source: Path
    target: Path
    caption: str | None  # None: the source has no caption yet (the flip gets none either)


@dataclass
class FlipResult:
    planned: list[FlipPlan]
    skipped_existing: list[Path]
    uncaptioned: list[Path]


def plan_flips(folder: Path, tag: str, only: tuple[str, ...] = ()) -> FlipResult:
    """Everything is read and checked here (every source must open) before a file is written."""
    folder = require_dir(folder)
    planned: list[FlipPlan] = []
    skipped: list[Path] = []
    uncaptioned: list[Path] = []
    for image in list_images(folder):
        if is_flip(image):
            continue
        if only and not any(fnmatch.fnmatch(image.name, pat) or fnmatch.fnmatch(image.stem, pat) for pat in only):
            continue
        target = flip_path(image)
        if target.exists():
            skipped.append(target)
            continue
        open_image(image)  # unreadable -> DatasetInvalid naming it, nothing written yet
        caption = read_caption(caption_path(image))
        if not caption:
            uncaptioned.append(image)
            caption = None
        planned.append(FlipPlan(image, target, add_tag(caption, tag) if caption else None))
    return FlipResult(planned, skipped, uncaptioned)


def write_flips(plans: list[FlipPlan]) -> None:
    for plan in plans:
        save_png(ImageOps.mirror(open_image(plan.source)), plan.target)
        if plan.caption is not None:
            write_text(caption_path(plan.target), plan.caption + "\n")
