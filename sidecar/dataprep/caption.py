"""Captions from a table the artist edits: `caption --init` writes `captions.csv` (one row per source
image, prefilled from captions that already exist), `caption --table` turns it into one `.txt` per image:
`[trigger_word], [framing], [pose/action], [background type]` (DATA-02). Flips get the same caption
plus the flip tag. Every row is checked before any caption is written.

An optional `status` column marks rows that `caption --auto` proposed (`proposed`) and the artist
checked (`confirmed`); a proposed row is not a caption yet: `--table` refuses it by name. A table
without the column (written by hand, or before proposals existed) reads as the artist's own words.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.dataprep.files import CAPTION_PARTS, add_tag, flip_path, is_flip, require_dir, split_caption, write_text
from sidecar.dataprep.kohya_layout import caption_path, list_images, read_caption
from sidecar.errors import DatasetInvalid

COLUMNS = ("file", *CAPTION_PARTS)
STATUS = "status"
TABLE_NAME = "captions.csv"  # the table's default name, in the folder it captions
PROPOSED, CONFIRMED = "proposed", "confirmed"
STATUSES = ("", PROPOSED, CONFIRMED)


@dataclass
class Row:
    file: str
    framing: str = ""
    pose: str = ""
    background: str = ""
    status: str = ""  # "", proposed, confirmed (see the module's docstring)

    def parts(self) -> list[str]:
        return [self.framing, self.pose, self.background]


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


def check_trigger(trigger: str) -> str:
    trigger = trigger.strip()
    if not trigger or "," in trigger or "\n" in trigger:
        raise DatasetInvalid(f"The trigger word {trigger!r} must be one non-empty tag without commas.",
                             {"trigger": trigger})
    return trigger


def sources(folder: Path) -> list[Path]:
    """The images the artist captions: everything but flips (their captions follow their source)."""
    return [p for p in list_images(folder) if not is_flip(p)]


def read_table(table: Path) -> list[Row]:
    """Parse the CSV; a missing/unknown column or a bad row is an error naming the table and row."""
    try:
        text = table.read_text(encoding="utf-8-sig")  # a spreadsheet may save a BOM
    except FileNotFoundError:
        raise DatasetInvalid(f"The caption table {table} does not exist (write it with `caption DIR --init`).",
                             {"file": str(table)}) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetInvalid(f"{table} cannot be read as UTF-8 text ({exc}).", {"file": str(table)}) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in (*COLUMNS, STATUS)]
    if missing or unknown:
        raise DatasetInvalid(
            f"{table}: the header must be {','.join(COLUMNS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "") + ".",
            {"file": str(table), "missing": missing, "unknown": unknown},
        )
    rows = []
    for raw in reader:
        values = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:  # more cells than columns: a comma inside an unquoted cell
            raise DatasetInvalid(
                f"{table} row {reader.line_num}: more cells than columns; a part may not contain a comma.",
                {"file": str(table), "row": reader.line_num},
            )
        if not any(values.values()):
            continue
        status = values.get(STATUS, "").lower()
        if status not in STATUSES:
            raise DatasetInvalid(f"{table} row {reader.line_num}: status {status!r} is not one of "
                                 f"{PROPOSED}, {CONFIRMED} or empty.", {"file": str(table), "row": reader.line_num})
        rows.append(Row(**{c: values.get(c, "") for c in COLUMNS}, status=status))
    return rows


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


def render_table(rows: list[Row]) -> str:
    """The CSV; the status column only when some row has a status (a hand-made table stays as it was)."""
    with_status = any(r.status for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, STATUS] if with_status else COLUMNS)
    for r in rows:
        writer.writerow([r.file, *r.parts(), r.status] if with_status else [r.file, *r.parts()])
    return buf.getvalue()


def write_table(table: Path, rows: list[Row]) -> None:
    write_text(table, render_table(rows))


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
        text = ", ".join([trigger, *row.parts()])
        writes.append(CaptionWrite(caption_path(image), text))
        flipped = flip_path(image)
        if flipped.exists():
            writes.append(CaptionWrite(caption_path(flipped), add_tag(text, flip_tag)))
    return writes


def write_captions(writes: list[CaptionWrite]) -> None:
    for w in writes:
        write_text(w.path, w.text + "\n")
