"""A labelled contact sheet: a grid of images with a title, a label per column and a few lines per row,
written as one PNG. A cell without an image shows its note (an error) on grey instead. The sweep's
checkpoint x prompt/seed sheet is one such grid, `sidecar grid`'s another, the Explorer's compare (a
daemon route) a third: so it sits below the commands and the API, knowing neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sidecar.atomic import write_with

HEADER_H = 28  # the title and column labels
LABEL_W = 260  # the row labels
LINE_H = 16
ROW_LABEL_LINES = 9
NOTE_LINES = 6


@dataclass(frozen=True)
class SheetCell:
    row: int
    col: int
    image: Path | None  # None: the note is drawn instead
    note: str = ""
    caption: str | None = None  # drawn over the cell's top-left corner (a draft's number and seed)


def wrap(text: str, width: int) -> list[str]:
    """Words into lines of at most `width` characters (a longer word gets a line of its own)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_sheet(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], cells: Iterable[SheetCell],
               cell_px: int = 256, *, label_w: int = LABEL_W) -> Image.Image:
    """`rows[r]` are the lines beside row r (cut to what fits) in a column `label_w` wide (0: none); each
    image is fitted into its cell."""
    sheet = Image.new("RGB", (label_w + len(columns) * cell_px, HEADER_H + len(rows) * cell_px), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(16), _font(12)
    draw.text((8, 6), title, fill="black", font=font)
    for ci, label in enumerate(columns):
        draw.text((label_w + ci * cell_px + 8, 6), label, fill="black", font=font)
    for r, lines in enumerate(rows):
        for li, line in enumerate(list(lines)[:ROW_LABEL_LINES]):
            draw.text((8, HEADER_H + r * cell_px + 8 + li * LINE_H), line, fill="black", font=small)
    for cell in cells:
        x, y = label_w + cell.col * cell_px, HEADER_H + cell.row * cell_px
        if cell.image is not None:
            with Image.open(cell.image) as im:
                thumb = im.convert("RGB")
            thumb.thumbnail((cell_px, cell_px))
            sheet.paste(thumb, (x + (cell_px - thumb.width) // 2, y + (cell_px - thumb.height) // 2))
        else:
            draw.rectangle((x + 2, y + 2, x + cell_px - 3, y + cell_px - 3), fill=(230, 230, 230))
            for li, line in enumerate(wrap(cell.note, 30)[:NOTE_LINES]):
                draw.text((x + 8, y + 8 + li * LINE_H), line, fill=(160, 0, 0), font=small)
        if cell.caption:
            box = draw.textbbox((x + 4, y + 4), cell.caption, font=small)
            draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
            draw.text((x + 4, y + 4), cell.caption, fill="black", font=small)
        draw.rectangle((x, y, x + cell_px - 1, y + cell_px - 1), outline=(200, 200, 200))
    return sheet


def write_sheet(path: Path, sheet: Image.Image) -> Path:
    write_with(path, lambda fh: sheet.save(fh, format="PNG"))
    return path
