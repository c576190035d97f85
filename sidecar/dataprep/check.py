"""`check`: is this folder a training set the artist can train on? (DATA-01/02/04)

Errors: 15-20 source images before flips, every image square at the training size, readable, not blank,
captioned with the trigger word first and four parts, no near-duplicates (perceptual hash), no caption
proposal of captions.csv left unconfirmed. Warnings:
flips of an asymmetric character above a set share, flips without the flip tag, captions without an
image. With a likeness judge (the project's reference set and the weights): images judged `different`
from the character are errors (a stranger teaches the LoRA the wrong face), `unsure` ones warnings; a
flip is judged as its mirror, so the character's asymmetric details face the references' way. It reads
only; the CLI prints the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from sidecar.dataprep.caption import PROPOSED, TABLE_NAME, read_table
from sidecar.dataprep.files import is_flip, open_image, require_dir, source_of_flip, split_caption
from sidecar.dataprep.kohya_layout import (
    CAPTION_SUFFIX,
    MAX_CAPTION_BYTES,
    caption_bytes,
    caption_path,
    list_images,
    read_caption,
)
from sidecar.dataprep.phash import dhash, near_duplicates, phash
from sidecar.errors import DatasetInvalid, LikenessUnavailable, ReferencesMissing, SidecarError
from sidecar.likeness.judge import LikenessService

Level = Literal["error", "warning"]
CHECKS = ("images", "count", "size", "blank", "captions", "trigger", "parts", "duplicates", "flips", "likeness")
BLANK_SHARE = 0.005  # under 0.5% of pixels away from the dominant colour: nothing to learn from


@dataclass
class CheckOptions:
    trigger: str
    min_images: int = 15
    max_images: int | None = 20  # None: no upper bound (the training gate)
    size: int = 512
    # The training gate's size rule: each image's short side at least this (any shape; trainers bucket),
    # instead of exactly `size` x `size` (DATA-01's square crops).
    min_side: int | None = None
    parts: bool = True  # the artist's four-part captions (DATA-02); the gate takes any caption
    what: str = "one character"  # what the count is for, in its message
    asymmetric: bool = True
    max_flip_share: float = 0.25
    flip_tag: str = "mirrored"
    max_phash: int = 6  # re-saves and rescales land at 0-2; distinct views of one character at 15+


@dataclass
class Finding:
    check: str
    level: Level
    message: str
    file: str | None = None


@dataclass
class Report:
    folder: Path
    sources: int = 0
    flips: int = 0
    findings: list[Finding] = field(default_factory=list)
    passed: dict[str, str] = field(default_factory=dict)  # check -> what was found fine

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def add(self, check: str, level: Level, message: str, file: Path | str | None = None) -> None:
        name = file.name if isinstance(file, Path) else file
        self.findings.append(Finding(check, level, message, name))

    def rows(self) -> list[tuple[str, str, str]]:
        """(check, status, detail) in CHECKS order: one row per finding, one `ok` row per clean check."""
        out = []
        for check in CHECKS:
            found = [f for f in self.findings if f.check == check]
            for f in found:
                out.append((check, f.level, f"{f.file}: {f.message}" if f.file else f.message))
            if not found and check in self.passed:
                out.append((check, "ok", self.passed[check]))
        return out

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "sourceImages": self.sources, "flips": self.flips,
                "ok": not self.errors, "errors": [asdict(f) for f in self.errors],
                "warnings": [asdict(f) for f in self.warnings], "passed": self.passed}


def is_blank(img: Image.Image) -> bool:
    a = np.asarray(img.convert("RGB").resize((128, 128)), dtype=np.int16)
    dominant = np.median(a.reshape(-1, 3), axis=0)
    return float((np.abs(a - dominant).max(axis=2) > 16).mean()) < BLANK_SHARE


def check_dataset(folder: Path, opts: CheckOptions, likeness: LikenessService | None = None) -> Report:
    folder = require_dir(folder)
    report = Report(folder)
    images = list_images(folder)
    if not images:
        raise DatasetInvalid(f"No images in {folder} (.png, .jpg, .webp).", {"file": str(folder)})

    opened: dict[Path, Image.Image] = {}
    for path in images:
        try:
            opened[path] = open_image(path)
        except DatasetInvalid as exc:
            report.add("images", "error", exc.message.replace(f"{path} ", "", 1), path)
    report.passed["images"] = f"{len(opened)} readable"

    sources = [p for p in images if not is_flip(p)]
    flips = [p for p in images if is_flip(p)]
    report.sources, report.flips = len(sources), len(flips)
    _check_count(report, len(sources), opts)
    report.passed["count"] = f"{len(sources)} source images + {len(flips)} flips"

    for path, img in opened.items():
        if opts.min_side is not None:
            if min(img.size) < opts.min_side:
                report.add("size", "error", f"{img.width}x{img.height} px; the short side must be at least "
                           f"{opts.min_side} px", path)
        elif img.size != (opts.size, opts.size):
            report.add("size", "error", f"{img.width}x{img.height} px; every image must be "
                       f"{opts.size}x{opts.size} (crop --size {opts.size})", path)
        if is_blank(img):
            report.add("blank", "error", "blank (one flat colour): remove it", path)
    report.passed["size"] = (f"all at least {opts.min_side} px on the short side" if opts.min_side is not None
                             else f"all {opts.size}x{opts.size}")
    report.passed["blank"] = "none blank"

    _check_captions(report, images, opts)
    _check_proposals(report, folder)
    _check_duplicates(report, opened, opts)
    _check_flips(report, folder, sources, flips, opts)
    _check_likeness(report, [p for p in sources if p in opened], [p for p in flips if p in opened], likeness)
    return report


def _check_count(report: Report, sources: int, opts: CheckOptions) -> None:
    if opts.max_images is None:
        if sources < opts.min_images:
            report.add("count", "error", f"{sources} source images (before flips); at least {opts.min_images} are "
                       f"needed for {opts.what}")
    elif not opts.min_images <= sources <= opts.max_images:
        report.add("count", "error", f"{sources} source images (before flips); "
                   f"{opts.min_images}-{opts.max_images} are needed for {opts.what}")


def _check_likeness(report: Report, sources: list[Path], flips: list[Path], likeness: LikenessService | None) -> None:
    if likeness is None:
        report.passed["likeness"] = "not judged (no project: --project ROOT with references in character.toml)"
        return
    try:
        judged = list(zip(sources, likeness.score(sources))) if sources else []
        judged += list(zip(flips, likeness.score(flips, mirrored=True))) if flips else []
    except ReferencesMissing as exc:
        report.passed["likeness"] = f"not judged: {exc.message}"
        return
    except LikenessUnavailable as exc:
        report.add("likeness", "warning", f"not judged: {exc.message}")
        return
    except SidecarError as exc:  # an image the judge cannot read is already an `images` error
        report.add("likeness", "warning", f"not judged: {exc.message}")
        return
    for path, lk in judged:
        mirrored = " (judged mirrored)" if path in flips else ""
        if lk.verdict == "different":
            report.add("likeness", "error", f"not the character: likeness {lk.score:.2f}{mirrored}; remove it "
                       "or check the references", path)
        elif lk.verdict == "unsure":
            report.add("likeness", "warning", f"may not be the character: likeness {lk.score:.2f}{mirrored}", path)
    scores = [lk.score for _, lk in judged]
    if scores:
        report.passed["likeness"] = (f"all the character (likeness {min(scores):.2f}-{max(scores):.2f}, "
                                     f"{lk.scorer})")


def _check_captions(report: Report, images: list[Path], opts: CheckOptions) -> None:
    captioned = 0
    for path in images:
        caption = read_caption(caption_path(path))
        size = caption_bytes(caption_path(path))
        if caption is None and size is not None and size > MAX_CAPTION_BYTES:
            report.add("captions", "error", f"{path.stem}{CAPTION_SUFFIX} is {size} bytes; a caption is one line "
                       f"of tags, at most {MAX_CAPTION_BYTES} bytes (not read)", path)
            continue
        if caption is None:
            report.add("captions", "error", f"no caption file {path.stem}{CAPTION_SUFFIX}", path)
            continue
        if not caption:
            report.add("captions", "error", f"{path.stem}{CAPTION_SUFFIX} is empty", path)
            continue
        captioned += 1
        parts = split_caption(caption)
        if parts[0] != opts.trigger:
            report.add("trigger", "error", f"caption starts with {parts[0]!r}, not the trigger word "
                       f"{opts.trigger!r}", path)
        body = parts[:-1] if is_flip(path) and opts.flip_tag and parts[-1] == opts.flip_tag else parts
        if opts.parts and (len(body) != 4 or not all(body)):
            report.add("parts", "error", f"{len(body)} caption part(s) {caption!r}; the format is "
                       "trigger, framing, pose/action, background", path)
    report.passed["captions"] = f"{captioned} captioned"
    report.passed["trigger"] = f"all start with {opts.trigger}"
    if opts.parts:
        report.passed["parts"] = "all have 4 parts"


def _check_proposals(report: Report, folder: Path) -> None:
    """Rows `caption --auto` proposed are not the artist's captions until confirmed in the table."""
    table = folder / TABLE_NAME
    if not table.is_file():
        return
    try:
        rows = read_table(table)
    except DatasetInvalid as exc:
        report.add("captions", "warning", f"{TABLE_NAME} cannot be read: {exc.message}")
        return
    for row in rows:
        if row.status == PROPOSED:
            report.add("captions", "error", f"its caption proposal in {TABLE_NAME} is not confirmed: check it, set "
                       "its status to confirmed, then run `caption DIR --table`", row.file)


def _check_duplicates(report: Report, opened: dict[Path, Image.Image], opts: CheckOptions) -> None:
    hashes = {p.name: (phash(img), dhash(img)) for p, img in opened.items()}
    # An image and its own mirror look alike when the view is symmetric: that pair is intended.
    skip = {frozenset((p.name, f"{source_of_flip(p)}{s.suffix}"))
            for p in opened if is_flip(p) for s in opened if s.stem == source_of_flip(p)}
    for a, b, dist in near_duplicates(hashes, max_phash=opts.max_phash, skip=skip):
        report.add("duplicates", "error", f"near-duplicate of {a} (pHash distance {dist}/64): "
                   "keep the better one", b)
    report.passed["duplicates"] = "no near-duplicates"


def _check_flips(report: Report, folder: Path, sources: list[Path], flips: list[Path],
                 opts: CheckOptions) -> None:
    stems = {p.stem for p in sources}
    for f in flips:
        if source_of_flip(f) not in stems:
            report.add("flips", "warning", f"its source {source_of_flip(f)}.* is not in the set", f)
        caption = read_caption(caption_path(f))
        if opts.flip_tag and caption and opts.flip_tag not in split_caption(caption):
            report.add("flips", "warning", f"flipped, but the caption lacks the {opts.flip_tag!r} tag", f)
    total = len(sources) + len(flips)
    share = len(flips) / total if total else 0.0
    if opts.asymmetric and share > opts.max_flip_share:
        report.add("flips", "warning",
                   f"flips are {share:.0%} of the images ({len(flips)}/{total}) of an asymmetric character "
                   f"(over {opts.max_flip_share:.0%}): mirrors put the right bracer on the left. Flip only views "
                   "where the asymmetric details do not show (`flip DIR --only ...`), or delete some *_flip files")
    images = {p.stem for p in list_images(folder)}
    for txt in sorted(folder.glob(f"*{CAPTION_SUFFIX}")):
        if txt.stem not in images:
            report.add("captions", "warning", "caption without an image", txt)
    report.passed["flips"] = f"{len(flips)} flips ({share:.0%})" + ("" if opts.asymmetric else ", symmetric character")
