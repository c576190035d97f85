"""The character's reference set: `references` globs in the project's `character.toml`, relative to the
project root, matched against the files there now (an artist adds a crop and the next score uses it)."""

from __future__ import annotations

from pathlib import Path

from sidecar.assist.character import FILE_NAME, load_character
from sidecar.errors import ReferencesMissing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def reference_files(project_root: Path | None) -> list[Path]:
    """Every image the globs match, sorted, each once; references_missing when there is none."""
    if project_root is None:
        raise ReferencesMissing("Likeness needs a project with a reference set: start the daemon with "
                                "`--project ROOT` (a folder with character.toml) or pass --project.",
                                {"fix": "references = [\"refs/*.png\"] in <project>/character.toml"})
    sheet_path = project_root / FILE_NAME
    if not sheet_path.is_file():
        raise ReferencesMissing(f"{sheet_path} does not exist: add it with `trigger` and `references = "
                                "[\"refs/*.png\"]` (crops of the character you approve).", {"file": str(sheet_path)})
    sheet = load_character(sheet_path)
    if not sheet.references:
        raise ReferencesMissing(f"{sheet_path} names no reference images: add `references = [\"refs/*.png\"]` "
                                "(globs of crops of the character you approve, relative to the project).",
                                {"file": str(sheet_path)})
    root = project_root.resolve()
    found: dict[Path, None] = {}
    for pattern in sheet.references:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.resolve().is_relative_to(root):
                found.setdefault(path, None)
    if not found:
        raise ReferencesMissing(f"The references {sheet.references} of {sheet_path} match no image under "
                                f"{root}.", {"file": str(sheet_path), "references": sheet.references})
    return list(found)
