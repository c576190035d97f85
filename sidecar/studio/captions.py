"""A training folder's caption proposals as the studio's Dataset view handles them: the rows of its
`captions.csv` with their status, and the three things the artist does with a proposal.

- confirm (as proposed, or edited first): the row becomes `confirmed` in the table and its caption is
  written at once, as `caption --table` would write it: the trigger word first, then framing, pose,
  background; the image's flip (if there is one) gets the same caption plus the flip tag (`mirrored`).
  A later `caption --auto` never touches a confirmed row.
- reject: the proposal is dropped, the row is left empty for the artist (or the next `--auto`) to fill;
  the image's caption file is not touched.
- propose: `sidecar.dataprep.proposals.run_proposals`, what `dataset caption --auto` runs; a row the artist
  changed while the proposer ran is kept as it now is.

Every row of a request is checked before anything is written; captions are written before the table,
so a row the table calls confirmed has its caption on disk. Blocking work: the route runs it in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.dataprep.proposals import ProposalRun, write_proposals
from sidecar.assist.tags import FLIP_TAGS, key
from sidecar.atomic import write_text
from sidecar.dataprep.captions_table import (
    CONFIRMED, PROPOSED, TABLE_NAME, Row, caption_text, check_trigger, read_table, sources, write_table,
)
from sidecar.dataprep.files import CAPTION_PARTS, add_tag, flip_path, is_flip, require_dir
from sidecar.dataprep.kohya_layout import caption_path, list_images
from sidecar.errors import DatasetInvalid, InvalidField, InvalidState
from sidecar.userfiles import user_path


@dataclass
class TableRow:
    row: Row
    caption: str  # what the row's caption file says (or will say, once confirmed): the trigger word first
    flip: str | None  # the image's flip in the folder, whose caption follows this one


@dataclass
class CaptionTable:
    folder: Path
    table: Path
    exists: bool
    trigger: str
    rows: list[TableRow]
    unlisted: list[str]  # source images without a row
    proposer: str | None = None
    unfilled: dict[str, list[str]] = field(default_factory=dict)

    @property
    def proposed(self) -> int:
        return sum(1 for r in self.rows if r.row.status == PROPOSED)


@dataclass(frozen=True)
class Confirmation:
    file: str
    framing: str
    pose: str
    background: str


def folder_of(raw: str) -> Path:
    return require_dir(user_path(raw, "dir", DatasetInvalid))


def read_captions(folder: Path, trigger: str, run: ProposalRun | None = None) -> CaptionTable:
    table = folder / TABLE_NAME
    rows = read_table(table) if table.is_file() else []
    images = {p.name for p in list_images(folder)}
    listed = {r.file for r in rows}
    out = []
    for row in rows:
        flip = flip_path(folder / row.file).name if row.file else None
        out.append(TableRow(row, caption_text(trigger, row), flip if flip in images else None))
    return CaptionTable(folder, table, table.is_file(), trigger, out,
                        [p.name for p in sources(folder) if p.name not in listed],
                        proposer=run.proposer if run is not None else None,
                        unfilled=dict(run.unfilled) if run is not None else {})


def _part(value: str, where: str, trigger: str, flip_tag: str) -> str:
    text = " ".join(value.split())
    if not text:
        raise InvalidField(f"{where} is empty: every caption has a framing, a pose and a background.",
                           {"field": where})
    if "," in text:
        raise InvalidField(f"{where} {text!r} contains a comma; each part is one phrase.", {"field": where})
    if key(text) in {key(trigger), key(flip_tag)} | FLIP_TAGS:
        raise InvalidField(f"{where} is {text!r}: the trigger word goes first and the flip tag on flips by "
                           "themselves; give the part's own words.", {"field": where, "value": text})
    return text


def confirm(folder: Path, items: list[Confirmation], trigger: str, flip_tag: str) -> list[str]:
    """Confirm each item's row (its parts as given) and write its captions. Answers the caption files written."""
    trigger = check_trigger(trigger)
    table = folder / TABLE_NAME
    rows = read_table(table) if table.is_file() else []
    by_name = {r.file: r for r in rows}
    names = {p.name: p for p in sources(folder)}
    flips = {p.name for p in list_images(folder) if is_flip(p)}
    writes: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for n, item in enumerate(items):
        where = f"rows[{n}]"
        if item.file in seen:
            raise InvalidField(f"{where}.file: {item.file} is named twice.", {"field": f"{where}.file"})
        seen.add(item.file)
        if item.file not in names:
            why = "is a flip (its caption follows its source)" if item.file in flips else "is not an image"
            raise DatasetInvalid(f"{where}.file: {item.file} {why} in {folder}.",
                                 {"field": f"{where}.file", "file": item.file})
        row = Row(item.file, *(_part(getattr(item, p), f"{where}.{p}", trigger, flip_tag) for p in CAPTION_PARTS),
                  status=CONFIRMED)
        text = caption_text(trigger, row)
        image = names[item.file]
        writes.append((caption_path(image), text))
        if flip_path(image).name in flips:
            writes.append((caption_path(flip_path(image)), add_tag(text, flip_tag)))
        if item.file in by_name:
            rows[rows.index(by_name[item.file])] = row
        else:
            rows.append(row)
        by_name[item.file] = row
    for path, text in writes:
        write_text(path, text + "\n")
    write_table(table, rows)
    return [path.name for path, _ in writes]


def reject(folder: Path, files: list[str]) -> None:
    """Drop the proposals of `files`: their rows are left empty (no status). Only proposed rows."""
    table = folder / TABLE_NAME
    rows = read_table(table) if table.is_file() else []
    by_name = {r.file: i for i, r in enumerate(rows)}
    for n, name in enumerate(files):
        index = by_name.get(name)
        if index is None or rows[index].status != PROPOSED:
            state = "has no row" if index is None else f"is {rows[index].status or 'filled in by hand'}"
            raise InvalidState(f"files[{n}]: {name} {state} in {TABLE_NAME}: only a proposal can be rejected.",
                               {"field": f"files[{n}]", "file": name})
        rows[index] = Row(name)
    write_table(table, rows)


def save_proposals(table: Path, run: ProposalRun) -> None:
    if run.proposed:  # nothing new: the table stays byte for byte
        run.rows = write_proposals(table, run)
