"""The folder layout kohya's train_network.py reads, named and read in one place (kohya-sd-scripts.md §3):

    TRAIN_ROOT/img/<repeats>_<trigger> <class>/   images + .txt captions   (--train_data_dir TRAIN_ROOT/img)
    TRAIN_ROOT/reg/<repeats>_<class>/             regularisation set         (--reg_data_dir TRAIN_ROOT/reg)

kohya reads the *parent* of the `<repeats>_...` folders and splits each name on the first `_`: the
number is the repeat count, the rest the class tokens. An image's caption is the `.txt` file beside it,
first line only. `sidecar dataset` writes this layout (`layout.py`) and checks it; the daemon's trainers
read it (`training/dataset.py`): both through the functions here, so they cannot disagree.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})  # what kohya's dataset loader reads
CAPTION_SUFFIX = ".txt"  # kohya is run with --caption_extension=.txt (its default `.caption` is wrong)
SUBSET_DIR = re.compile(r"^(?P<repeats>\d+)_(?P<tokens>.+)$")
MAX_CAPTION_BYTES = 1024 * 1024  # a caption is a line of tags; the bound every reader of one holds to
IMG_DIR = "img"
REG_DIR = "reg"


@dataclass(frozen=True)
class SubsetFolder:
    """One `<repeats>_<class tokens>` folder as kohya reads it."""

    path: Path
    repeats: int
    class_tokens: str

    @property
    def name(self) -> str:
        return self.path.name


def list_images(folder: Path) -> list[Path]:
    """Images directly in `folder` (kohya does not recurse), sorted by name. Hidden files are skipped, as
    kohya's `*.png` globs skip them."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def caption_path(image: Path) -> Path:
    return image.with_suffix(CAPTION_SUFFIX)


def caption_bytes(path: Path) -> int | None:
    """The size of a caption file (from `stat`, nothing read), None when there is no regular file."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def read_caption(path: Path) -> str | None:
    """The caption kohya would use (first line, stripped; "" for an empty file), or None when there is no
    readable file or it is over MAX_CAPTION_BYTES: such a file is never read whole (a 1 GB caption made
    the studio's dataset view take 12 s and 2.7 GB); `caption_bytes` tells the two apart."""
    size = caption_bytes(path)
    if size is None or size > MAX_CAPTION_BYTES:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CAPTION_BYTES + 1)  # the file may have grown since the stat
        if len(data) > MAX_CAPTION_BYTES:
            return None
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def subset_name(repeats: int, class_tokens: str) -> str:
    """The folder name kohya reads as `repeats` repeats of `class_tokens` (`10_spyke_plasma_v1 character`)."""
    return f"{repeats}_{class_tokens}"


def parse_subset(folder: Path) -> SubsetFolder | None:
    """The folder as kohya reads it, or None when its name is not `<repeats>_<class tokens>`."""
    m = SUBSET_DIR.match(folder.name)
    if m is None:
        return None
    return SubsetFolder(folder, int(m.group("repeats")), m.group("tokens"))


def subset_folders(folder: Path, warnings: list[str] | None = None) -> list[SubsetFolder]:
    """The subsets kohya trains on in `folder`, by name. What kohya ignores (a name without a repeat
    count, a count below 1) is left out, with the reason appended to `warnings`."""
    found: list[SubsetFolder] = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        subset = parse_subset(d)
        if subset is None:
            reason = "kohya reads only folders named <repeats>_<class>"
        elif subset.repeats < 1:
            reason = "a repeat count below 1 trains nothing"
        else:
            found.append(subset)
            continue
        if warnings is not None:
            warnings.append(f"{d.name}/ is ignored: {reason}.")
    return found


def has_subsets(folder: Path) -> bool:
    """Whether `folder` is what kohya's --train_data_dir must be: a parent of image-holding subset folders."""
    return folder.is_dir() and any(
        d.is_dir() and SUBSET_DIR.match(d.name) and list_images(d) for d in folder.iterdir())


def kohya_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """(the training subsets' folder, the regularisation subsets' folder) of a kohya layout given as the
    `img/` folder itself or as the root holding `img/` and an optional `reg/`; (None, None) for anything else."""
    if has_subsets(root):
        reg = root.parent / REG_DIR if root.name == IMG_DIR else None
        return root, reg if reg is not None and has_subsets(reg) else None
    if has_subsets(root / IMG_DIR):
        return root / IMG_DIR, root / REG_DIR if has_subsets(root / REG_DIR) else None
    return None, None
