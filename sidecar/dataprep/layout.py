"""`sidecar dataset layout`: copy a captioned set (and a regularisation set) into the folder layout
kohya's train_network.py reads (`kohya_layout.py` describes it; the daemon's trainers read it back
through the same module):

    TRAIN_ROOT/img/<repeats>_<trigger> <class>/   images + .txt captions   (--train_data_dir TRAIN_ROOT/img)
    TRAIN_ROOT/reg/<repeats>_<class>/             regularisation set         (--reg_data_dir TRAIN_ROOT/reg)

The new tree is built in a staging folder and renamed into place, so a failure leaves TRAIN_ROOT as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.atomic import swap_dir
from sidecar.dataprep.files import require_dir
from sidecar.dataprep.kohya_layout import IMG_DIR, REG_DIR, caption_path, list_images, read_caption, subset_name
from sidecar.errors import DatasetInvalid


@dataclass
class Copy:
    source: Path
    target: Path  # relative to the staging root (img/... or reg/...)


@dataclass
class LayoutPlan:
    root: Path
    img_subset: str  # "10_spyke_plasma_v1 anime character"
    reg_subset: str | None  # "1_anime character" when a reg set is laid out
    copies: list[Copy] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)  # top-level folders of root replaced (IMG_DIR, REG_DIR)
    notes: list[str] = field(default_factory=list)

    @property
    def train_data_dir(self) -> Path:
        return self.root / IMG_DIR

    @property
    def reg_data_dir(self) -> Path | None:
        return self.root / REG_DIR if self.reg_subset else None


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or "/" in value or "\\" in value or value.startswith("."):
        raise DatasetInvalid(f"The {what} {value!r} must be non-empty, without path separators.", {what: value})
    return value


def plan_layout(src: Path, root: Path, *, repeats: int, class_name: str, trigger: str,
                reg: Path | None = None, reg_repeats: int = 1, overwrite: bool = False) -> LayoutPlan:
    src = require_dir(src)
    root = Path(root).expanduser().resolve()
    class_name = _check_name(class_name, "class")
    trigger = _check_name(trigger, "trigger word")
    if repeats < 1 or reg_repeats < 1:
        raise DatasetInvalid("Repeat counts must be at least 1 (kohya silently skips a folder with 0).",
                             {"repeats": repeats, "regRepeats": reg_repeats})
    if root == src.resolve() or src.resolve().is_relative_to(root / IMG_DIR):
        raise DatasetInvalid(f"--out {root} must not hold the source set {src}; lay it out somewhere else.",
                             {"file": str(root)})
    if root.exists() and not root.is_dir():
        raise DatasetInvalid(f"{root} is a file; --out must be a folder.", {"file": str(root)})

    plan = LayoutPlan(root, subset_name(repeats, f"{trigger} {class_name}"), None)
    images = list_images(src)
    if not images:
        raise DatasetInvalid(f"No images in {src}.", {"file": str(src)})
    uncaptioned = [p.name for p in images if not read_caption(caption_path(p))]
    if uncaptioned:
        # kohya would not fail: it would silently caption these with the folder's class tokens.
        raise DatasetInvalid(f"{len(uncaptioned)} image(s) in {src} have no caption ({', '.join(uncaptioned[:5])}"
                             f"{', ...' if len(uncaptioned) > 5 else ''}); run `caption` first.",
                             {"files": uncaptioned})
    for image in images:
        plan.copies.append(Copy(image, Path(IMG_DIR) / plan.img_subset / image.name))
        plan.copies.append(Copy(caption_path(image), Path(IMG_DIR) / plan.img_subset / caption_path(image).name))
    plan.replace.append(IMG_DIR)

    if reg is not None:
        reg = require_dir(reg, "regularisation folder")
        reg_images = list_images(reg)
        if not reg_images:
            raise DatasetInvalid(f"No images in the regularisation folder {reg}.", {"file": str(reg)})
        if reg.resolve().is_relative_to(root / REG_DIR):
            raise DatasetInvalid(f"The regularisation set {reg} is already inside {root / 'reg'}; leave out --reg "
                                 "(it stays where it is) or generate it elsewhere.", {"file": str(reg)})
        plan.reg_subset = subset_name(reg_repeats, class_name)
        for image in reg_images:
            plan.copies.append(Copy(image, Path(REG_DIR) / plan.reg_subset / image.name))
            if caption_path(image).is_file():
                plan.copies.append(Copy(caption_path(image), Path(REG_DIR) / plan.reg_subset / caption_path(image).name))
        plan.replace.append(REG_DIR)
    elif (root / REG_DIR).is_dir() and any((root / REG_DIR).iterdir()):
        existing = sorted(p.name for p in (root / REG_DIR).iterdir() if p.is_dir())
        plan.reg_subset = existing[0] if existing else None
        plan.notes.append(f"kept the regularisation set already in {root / 'reg'} ({', '.join(existing)})")

    for top in plan.replace:
        target = root / top
        if target.exists() and any(target.iterdir()) and not overwrite:
            held = ", ".join(sorted(p.name for p in target.iterdir())[:3])
            raise DatasetInvalid(f"{target} already holds {held}; kohya would train on all of it. Pass --overwrite "
                                 "to replace it, or choose another --out.", {"file": str(target)})
    return plan


def apply_layout(plan: LayoutPlan) -> None:
    root = plan.root
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".layout-{uuid.uuid4().hex[:8]}"
    try:
        for c in plan.copies:
            (staging / c.target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(c.source, staging / c.target)
        for top in plan.replace:
            swap_dir(staging / top, root / top)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
