"""The captions table (`captions.csv`) of a training folder: its columns, its rows and their status, read
and written in one place. The `sidecar dataset caption` tools, `dataset check`, the caption proposers
(`proposals.py`) and the studio's dataset view (`sidecar.studio.captions`) all go through it, so they
agree on what a confirmed row is.

One row per source image (flips are not rows: their captions follow their source's, plus the flip tag):
`file,framing,pose,background[,status]`. The trigger word is never a part: it is put first when a row
becomes a caption (`caption_text`). The optional `status` column marks rows `caption --auto` proposed
(`proposed`) and the artist checked (`confirmed`); a table without the column (written by hand, or before
proposals existed) reads as the artist's own words.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from sidecar.dataprep.files import CAPTION_PARTS, is_flip, write_text
from sidecar.dataprep.kohya_layout import list_images
from sidecar.errors import DatasetInvalid

COLUMNS = ("file", *CAPTION_PARTS)
STATUS = "status"
TABLE_NAME = "captions.csv"  # the table's default name, in the folder it captions
MAX_TABLE_BYTES = 16 * 1024 * 1024  # a row per image, a few words per cell: 16 MiB is 100,000s of rows
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


def is_confirmed(row: Row) -> bool:
    """The artist's words: confirmed, or filled in by hand (no status, every part) before proposals existed."""
    return row.status == CONFIRMED or (row.status == "" and all(row.parts()))


def check_trigger(trigger: str) -> str:
    trigger = trigger.strip()
    if not trigger or "," in trigger or "\n" in trigger:
        raise DatasetInvalid(f"The trigger word {trigger!r} must be one non-empty tag without commas.",
                             {"trigger": trigger})
    return trigger


def caption_text(trigger: str, row: Row) -> str:
    """The caption a row becomes (DATA-02): the trigger word first, then framing, pose, background."""
    return ", ".join([trigger, *row.parts()])


def sources(folder: Path) -> list[Path]:
    """The images the artist captions: everything but flips (their captions follow their source)."""
    return [p for p in list_images(folder) if not is_flip(p)]


def read_table(table: Path) -> list[Row]:
    """Parse the CSV; a missing/unknown column or a bad row is an error naming the table and row."""
    try:
        size = table.stat().st_size
        if size > MAX_TABLE_BYTES:
            raise DatasetInvalid(f"The caption table {table} is {size} bytes; a table of captions is at most "
                                 f"{MAX_TABLE_BYTES}.", {"file": str(table), "sizeBytes": size, "limit": MAX_TABLE_BYTES})
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
    try:
        for raw in reader:
            row = _row(table, reader, raw)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:  # e.g. a cell past csv's field limit (128 KiB): no caption part is that long
        line = reader.line_num + 1  # the line being read when it failed
        raise DatasetInvalid(f"{table} row {line}: {exc}; a caption part is a few words.",
                             {"file": str(table), "row": line}) from None
    return rows


def _row(table: Path, reader: csv.DictReader, raw: dict) -> Row | None:
    """One CSV row as a `Row` (None for a blank one); an error naming the table and row otherwise."""
    values = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
    if None in raw:  # more cells than columns: a comma inside an unquoted cell
        raise DatasetInvalid(
            f"{table} row {reader.line_num}: more cells than columns; a part may not contain a comma.",
            {"file": str(table), "row": reader.line_num},
        )
    if not any(values.values()):
        return None
    status = values.get(STATUS, "").lower()
    if status not in STATUSES:
        raise DatasetInvalid(f"{table} row {reader.line_num}: status {status!r} is not one of "
                             f"{PROPOSED}, {CONFIRMED} or empty.", {"file": str(table), "row": reader.line_num})
    return Row(**{c: values.get(c, "") for c in COLUMNS}, status=status)


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
