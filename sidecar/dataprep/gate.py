"""The training quality gate: before a run is queued (and so before anything is rented), the set must pass
`sidecar dataset check`'s checks held to the run's preset and family, else `dataset_not_ready` lists
each finding with its file and its fix. `force` (the caller's business) skips it.

What it asks (design.md "Round 3 contracts"): at least `presets.MIN_IMAGES[preset]` source images
(before flips), each image's short side at least the family's base size (any shape: trainers bucket),
readable and not blank, every image captioned with the trigger word first and no caption proposal left
unconfirmed, no near-duplicates, and no image judged `different` from the character when the project has
a reference set and the likeness weights. The four-part caption format and the 20-image ceiling of
`dataset check` are the artist's own conventions, not the gate's. The checks are `check.py`'s; this
module only chooses their options, walks kohya's subset folders and words the fixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.dataprep.check import CheckOptions, Finding, check_dataset
from sidecar.dataprep.files import is_flip, require_dir
from sidecar.dataprep.kohya_layout import kohya_dirs, list_images, subset_folders
from sidecar.errors import DatasetInvalid, DatasetNotReady
from sidecar.likeness.judge import LikenessService
from sidecar.training import presets
from sidecar.userfiles import user_path

MAX_LISTED = 50  # findings in the error's details (the count says how many there were)


@dataclass
class GateFinding:
    check: str
    file: str | None
    message: str
    fix: str

    def to_json(self) -> dict[str, str | None]:
        return {"check": self.check, "file": self.file, "message": self.message, "fix": self.fix}


def _fix(check: str, trigger: str, min_images: int, min_side: int) -> str:
    return {
        "images": "replace it with a readable PNG/JPEG/WebP, or remove it",
        "count": f"add images until there are at least {min_images} (flips do not count)",
        "size": f"replace it with a larger image (short side at least {min_side} px), or remove it",
        "blank": "remove it",
        "captions": "caption it (`sidecar dataset caption DIR`), or confirm its proposal in captions.csv",
        "trigger": f"start its caption with {trigger}, then a comma",
        "duplicates": "remove one of the two (keep the better one)",
        "likeness": "remove it, or check the references in character.toml",
    }.get(check, "see the message")


def gate_options(trigger: str, preset: str | None, family: str) -> CheckOptions:
    preset = preset or presets.DEFAULT_GATE_PRESET
    what = {"character": "a character", "style": "a style", "concept": "a concept"}[preset]
    return CheckOptions(trigger=trigger, min_images=presets.MIN_IMAGES[preset], max_images=None,
                        min_side=presets.BASE_SIZE.get(family, presets.BASE_SIZE["sd15"]), parts=False,
                        what=f"{what} LoRA")


def findings(dataset_dir: Path, trigger: str, preset: str | None, family: str,
             likeness: LikenessService | None = None) -> list[GateFinding]:
    """Every error the checks find in the set (warnings do not stop a run). Blocking: call it in a thread."""
    root = require_dir(user_path(str(dataset_dir), "datasetDir", DatasetInvalid))  # absolute, as the trainers'
    opts = gate_options(trigger, preset, family)
    img_dir, _ = kohya_dirs(root)
    folders = [(f.path, f"{f.path.name}/") for f in subset_folders(img_dir)] if img_dir is not None else [(root, "")]
    found: list[GateFinding] = []
    sources = 0
    per_folder = CheckOptions(**{**opts.__dict__, "min_images": 0})  # the count is over every folder
    for folder, prefix in folders:
        if prefix and not list_images(folder):
            continue  # an empty kohya subset; an empty flat folder is check_dataset's dataset_invalid
        report = check_dataset(folder, per_folder, likeness)
        sources += sum(not is_flip(p) for p in list_images(folder))
        found += [_finding(f, prefix, opts) for f in report.errors]
    if sources < opts.min_images:
        found.insert(0, GateFinding("count", None, f"{sources} source images (before flips); at least "
                                    f"{opts.min_images} are needed for {opts.what}",
                                    _fix("count", trigger, opts.min_images, opts.min_side or 0)))
    return found


def _finding(f: Finding, prefix: str, opts: CheckOptions) -> GateFinding:
    return GateFinding(f.check, f"{prefix}{f.file}" if f.file else None, f.message,
                       _fix(f.check, opts.trigger, opts.min_images, opts.min_side or 0))


def require_ready(dataset_dir: Path, trigger: str, preset: str | None, family: str,
                  likeness: LikenessService | None = None) -> None:
    """Raise `dataset_not_ready` with the findings, or return: the set may train."""
    found = findings(dataset_dir, trigger, preset, family, likeness)
    if not found:
        return
    opts = gate_options(trigger, preset, family)
    head = "; ".join(f"{f.file}: {f.message}" if f.file else f.message for f in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    raise DatasetNotReady(
        f"The dataset in {dataset_dir} is not ready to train a {preset or presets.DEFAULT_GATE_PRESET} LoRA "
        f"({family}): {len(found)} problem(s): {head}{more}. Fix them, or pass force (--force) to train anyway.",
        {"datasetDir": str(dataset_dir), "preset": preset, "family": family, "minImages": opts.min_images,
         "minSide": opts.min_side, "findingCount": len(found),
         "findings": [f.to_json() for f in found[:MAX_LISTED]]})
