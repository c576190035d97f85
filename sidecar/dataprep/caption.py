"""Captions from a table the artist edits: `caption --init` writes `captions.csv` (one row per source
image, prefilled from captions that already exist), `caption --table` turns it into one `.txt` per image:
`[trigger_word], [framing], [pose/action], [background type]` (DATA-02). Flips get the same caption
plus the flip tag. Every row is checked before any caption is written.

The table itself (columns, rows, the `status` column of `caption --auto`'s proposals) is
`captions_table.py`; a proposed row is not a caption yet: `--table` refuses it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.dataprep.captions_table import (  # noqa: F401  (the table's names, as the tools import them)
    COLUMNS, CONFIRMED, PROPOSED, STATUS, STATUSES, TABLE_NAME, Row, caption_text, check_trigger, read_table,
    render_table, sources, write_table,
)
from sidecar.dataprep.files import CAPTION_PARTS, add_tag, flip_path, is_flip, require_dir, split_caption, write_text
from sidecar.dataprep.kohya_layout import caption_path, list_images, read_caption
from sidecar.errors import DatasetInvalid


@dataclass
class InitResult:
    rows: list[Row]
    added: list[str] = field(default_factory=list)
    prefilled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # rows whose image is gone


@dataclass
class CaptionWrite:
    path: Path
    text: str


def init_table(folder: Path, table: Path, trigger: str) -> InitResult:
    """Rows for every source image; keeps what an existing table says, prefills new rows from captions."""
    folder = require_dir(folder)
    trigger = check_trigger(trigger)
    images = sources(folder)
    if not images:
        raise DatasetInvalid(f"No images in {folder} to caption (.png, .jpg, .webp).", {"file": str(folder)})
    old = {r.file: r for r in read_table(table)} if table.exists() else {}
    result = InitResult(rows=[])
    for image in images:
        if image.name in old:
            result.rows.append(old[image.name])
            continue
        row = Row(image.name)
        caption = read_caption(caption_path(image))
        parts = split_caption(caption) if caption else []
        if len(parts) == 4 and parts[0] == trigger:
            row.framing, row.pose, row.background = parts[1:]
            result.prefilled.append(image.name)
        result.rows.append(row)
        result.added.append(image.name)
    names = {p.name for p in images}
    result.dropped = [name for name in old if name not in names]
    return result


def plan_captions(folder: Path, table: Path, trigger: str, flip_tag: str) -> list[CaptionWrite]:
    """Validate the whole table against the folder, then say which files get which caption."""
    folder = require_dir(folder)
    trigger = check_trigger(trigger)
    rows = read_table(table)
    images = {p.name: p for p in sources(folder)}
    flips = {p.name for p in list_images(folder) if is_flip(p)}
    problems: list[str] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"row {n} ({row.file or 'no file'})"
        if not row.file:
            problems.append(f"{where}: the file cell is empty")
        elif row.file in seen:
            problems.append(f"{where}: {row.file} has a second row")
        elif row.file in flips:
            problems.append(f"{where}: {row.file} is a flip; caption its source (flips follow it)")
        elif row.file not in images:
            problems.append(f"{where}: there is no image {row.file} in {folder}")
        seen.add(row.file)
        if row.status == PROPOSED:
            problems.append(f"{where}: a proposal, not confirmed yet: check framing, pose and background, then "
                            f"set its status to {CONFIRMED}")
            continue
        for column, value in zip(CAPTION_PARTS, row.parts()):
            if not value:
                problems.append(f"{where}: {column} is empty")
            elif "," in value or "\n" in value:
                problems.append(f"{where}: {column} {value!r} contains a comma; each part is one phrase")
    missing_rows = [name for name in images if name not in seen]
    if missing_rows:
        problems.append(f"no row for {len(missing_rows)} image(s): {', '.join(missing_rows[:5])}"
                        f"{', ...' if len(missing_rows) > 5 else ''} (add them, or run `caption DIR --init`)")
    if problems:
        raise DatasetInvalid(f"{table}: {len(problems)} problem(s), no caption written: " + "; ".join(problems[:8])
                             + ("; ..." if len(problems) > 8 else "") + ".",
                             {"file": str(table), "problems": problems, "missingRows": missing_rows})
    writes = []
    for row in rows:
        image = images[row.file]
        text = caption_text(trigger, row)
        writes.append(CaptionWrite(caption_path(image), text))
        flipped = flip_path(image)
        if flipped.exists():
            writes.append(CaptionWrite(caption_path(flipped), add_tag(text, flip_tag)))
    return writes


def write_captions(writes: list[CaptionWrite]) -> None:
    for w in writes:
        write_text(w.path, w.text + "\n")
