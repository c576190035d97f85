"""A training folder as the studio's Dataset view shows it: each image with its caption, `sidecar dataset
check`'s findings beside the images they name, and the two edits made there: a caption rewritten in
place (atomically, the first line kohya reads) and horizontal flips of the images picked (`dataset flip`'s
own plan and writer, so the flips and their `mirrored` captions are the command's).

A flat folder of images and `.txt` captions, as `dataset crop`/`caption`/`flip`/`check` make it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sidecar.atomic import write_text
from sidecar.dataprep.check import CheckOptions, Finding, Report, check_dataset
from sidecar.likeness.judge import LikenessService
from sidecar.dataprep.files import DEFAULT_FLIP_TAG, is_flip, require_dir
from sidecar.dataprep.flip import plan_flips, write_flips
from sidecar.dataprep.kohya_layout import caption_path, list_images, read_caption
from sidecar.errors import DatasetInvalid, InvalidField
from sidecar.userfiles import MAX_TEXT_BYTES, user_path

MAX_CAPTION = 2000  # characters: a caption is one line of tags


@dataclass
class DatasetImage:
    name: str
    caption: str | None
    flip: bool
    width: int | None
    height: int | None


@dataclass
class DatasetView:
    folder: Path
    images: list[DatasetImage]
    report: Report | None
    findings: list[Finding] = field(default_factory=list)


def folder_of(raw: str) -> Path:
    return require_dir(user_path(raw, "dir", DatasetInvalid))


def image_in(folder: Path, name: str) -> Path:
    """`name` as one of the folder's images (never a path elsewhere)."""
    for path in list_images(folder):
        if path.name == name:
            return path
    raise DatasetInvalid(f"{folder} has no image {name!r}.", {"field": "name", "file": name})


def _size(path: Path) -> tuple[int | None, int | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the header only: nothing decoded
            with Image.open(path) as img:
                return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # a bomb: its finding says so
        return None, None


def read_dataset(raw: str, trigger: str, likeness: LikenessService | None = None) -> DatasetView:
    folder = folder_of(raw)
    images = [DatasetImage(p.name, read_caption(caption_path(p)), is_flip(p), *_size(p)) for p in list_images(folder)]
    try:
        report = check_dataset(folder, CheckOptions(trigger=trigger), likeness)
    except DatasetInvalid as exc:  # no images at all: say so beside the (empty) grid
        return DatasetView(folder, images, None, [Finding("images", "error", exc.message)])
    return DatasetView(folder, images, report, report.findings)


def write_caption(raw: str, name: str, caption: str) -> DatasetImage:
    folder = folder_of(raw)
    image = image_in(folder, name)
    text = caption.strip()
    if "\n" in text or "\r" in text:
        raise InvalidField("caption must be one line (kohya reads only the first).", {"field": "caption"})
    if len(text.encode()) > min(MAX_TEXT_BYTES, MAX_CAPTION * 4) or len(text) > MAX_CAPTION:
        raise InvalidField(f"caption is over {MAX_CAPTION} characters.", {"field": "caption", "limit": MAX_CAPTION})
    write_text(caption_path(image), text + "\n")
    return DatasetImage(image.name, read_caption(caption_path(image)), is_flip(image), *_size(image))


@dataclass
class FlipOutcome:
    written: list[str]
    skipped_existing: list[str]
    uncaptioned: list[str]


def flip_images(raw: str, names: list[str], tag: str = DEFAULT_FLIP_TAG) -> FlipOutcome:
    folder = folder_of(raw)
    for name in names:
        if is_flip(image_in(folder, name)):
            raise DatasetInvalid(f"{name} is a flip already; flips are never flipped again.",
                                 {"field": "names", "file": name})
    # Exact names as the patterns: plan_flips matches them with fnmatch, so escape its wildcards.
    patterns = tuple(n.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]") for n in names)
    result = plan_flips(folder, tag, patterns)
    write_flips(result.planned)
    return FlipOutcome([p.target.name for p in result.planned], [p.name for p in result.skipped_existing],
                       [p.name for p in result.uncaptioned])
