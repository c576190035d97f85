"""The Explorer compare's contact sheet and index, as `sidecar grid` writes its own: the compare's two
LoRA combinations as the columns, its seeds as the rows, in `explorer/compare/<groupId>/` of the
daemon's data dir (`index.json` written when the compare is queued, `contact-sheet.png` drawn once
every cell has finished, so a link to it can be saved and shared). Blocking: call from a thread.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError

from sidecar.atomic import write_text
from sidecar.contact_sheet import SheetCell, draw_sheet, wrap, write_sheet
from sidecar.concepts.fields import Wire
from sidecar.errors import NotFound

GROUP = re.compile(r"^[0-9a-f]{32}$")  # new_group_id's uuid4 hex: nothing else names a folder here
CELL_PX = 256
MAX_INDEX_BYTES = 256 * 1024


class IndexCell(Wire):
    column: str
    seed: int
    job_id: str


class CompareIndex(Wire):
    kind: str = "compare"
    group_id: str
    prompt: str
    columns: dict[str, str] = Field(description="`a` and `b`: each combination's label (its stack when unlabelled)")
    stacks: dict[str, dict[str, float | None]]
    seeds: list[int]
    cells: list[IndexCell]
    sheet: str = "contact-sheet.png"


def folder(data_dir: Path, group_id: str) -> Path:
    if not GROUP.match(group_id):  # no compare has such an id (as /jobs/{id} of an id never given)
        raise NotFound(f"No Explorer compare {group_id[:80]!r}: its id is the compare's groupId (32 hex digits).",
                       {"groupId": group_id[:80]})
    return data_dir / "explorer" / "compare" / group_id


def write_index(data_dir: Path, index: CompareIndex) -> Path:
    path = folder(data_dir, index.group_id) / "index.json"
    write_text(path, index.model_dump_json(by_alias=True, indent=2) + "\n")
    return path


def read_index(data_dir: Path, group_id: str) -> CompareIndex:
    path = folder(data_dir, group_id) / "index.json"
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise ValueError("too large")
        return CompareIndex.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"No Explorer compare {group_id} (POST /explorer/compare makes one).",
                       {"groupId": group_id}) from None
    except (OSError, ValueError, ValidationError):
        raise NotFound(f"The Explorer compare {group_id}'s index cannot be read: compare again.",
                       {"groupId": group_id}) from None


def draw(data_dir: Path, index: CompareIndex, outcomes: dict[str, tuple[str, Path | None, str]],
         *, keep: bool) -> Path:
    """`outcomes`: job id -> (status, its image or None, its error). `keep`: every cell finished, the
    sheet is the compare's for good; else a preview beside it that the next request draws again."""
    # The title stays short (it shares the header line with the column labels); the prompt goes beside each
    # row, under its seed, as the grid's rows say what they vary.
    title = "Explorer compare"
    columns = [index.columns["a"], index.columns["b"]]
    prompt = wrap(index.prompt, 34)
    rows = [[f"seed {seed}", *prompt[:7], *(["..."] if len(prompt) > 7 else [])] for seed in index.seeds]
    cells = []
    for cell in index.cells:
        status, image, error = outcomes.get(cell.job_id, ("removed", None, ""))
        cells.append(SheetCell(index.seeds.index(cell.seed), 0 if cell.column == "a" else 1,
                               image if status == "succeeded" else None, error or status))
    name = index.sheet if keep else "contact-sheet.preview.png"
    sheet = draw_sheet(title, columns, rows, cells, CELL_PX)
    return write_sheet(folder(data_dir, index.group_id) / name, sheet)


def kept(data_dir: Path, index: CompareIndex) -> Path | None:
    path = folder(data_dir, index.group_id) / index.sheet
    return path if path.is_file() else None
