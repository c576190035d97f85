"""Small Markdown helpers the reference pages share: text that must print as written inside a table."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def cell(text: object) -> str:
    """Text safe in a table cell: one line, no stray pipes, no `<tag>` taken for HTML, no emphasis."""
    flat = " ".join(str(text).split())
    # code spans (between backticks) print as written; only the prose between them is escaped
    pieces = flat.split("`")
    if len(pieces) % 2 == 0:  # an unpaired backtick: no code span at all
        pieces = [flat.replace("`", "\\`")]
    for i in range(0, len(pieces), 2):
        pieces[i] = html.escape(pieces[i], quote=False).replace("*", "\\*").replace("|", "\\|")
    return "`".join(pieces)


def code(text: object) -> str:
    """Inline code, whatever backticks the text holds. A pipe inside it needs no escape: Python-Markdown's
    tables do not split cells inside code spans (and would print the backslash)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A pipe table; cells are given already escaped (see `cell`, `code`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


GENERATED = ("!!! note \"Generated\"\n    This page is built from {source} each time the manual is built; "
             "edit the code, not this page.\n")
