"""Where a project keeps its concepts, and reading and writing them: `concepts/NAME.toml` (the fields),
`concepts/NAME.intent.json` (the rounds and what was learned, `intent.py`).

A name is 1 to 64 letters, digits, `-` and `_`, starting with a letter or digit: it is a file name
on every system, and nothing like `../x` or `a/b` reaches the file system. Every path is checked to
stay inside the project (`inside`: a `concepts/` folder or file linked elsewhere is refused). Writes
are atomic; a file that does not read back as a concept is `concept_invalid`, never overwritten by a
GET. Blocking: call from a thread.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from sidecar.atomic import write_text
from sidecar.concepts import toml_out
from sidecar.concepts.fields import ALL_FIELDS, Concept
from sidecar.errors import ConceptExists, ConceptInvalid, ConceptNotFound, InvalidField
from sidecar.jobs.project_paths import inside

FOLDER = "concepts"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_BYTES = 64 * 1024
HEADER = ("A concept of the studio's Concept view (sidecar concepts): each field's value and whether it is\n"
          "locked (its tags go into every prompt verbatim; the feedback interpreter never changes it).")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidField(f"A concept's name is 1 to 64 letters, digits, '-' and '_' (starting with a letter or "
                           f"digit); got {name[:80]!r}.", {"field": "name", "value": name[:80]})
    return name


def concept_file(root: Path, name: str) -> Path:
    return inside(root, root / FOLDER / f"{check_name(name)}.toml")


def intent_file(root: Path, name: str) -> Path:
    return inside(root, root / FOLDER / f"{check_name(name)}.intent.json")


def names(root: Path) -> list[str]:
    folder = root / FOLDER
    if not folder.is_dir():
        return []
    inside(root, folder)
    return sorted(p.stem for p in folder.glob("*.toml") if NAME.match(p.stem) and p.is_file())


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors(include_url=False))


def read(root: Path, name: str) -> Concept:
    path = concept_file(root, name)
    if not path.is_file():
        raise ConceptNotFound(f"No concept {name!r} in the project ({FOLDER}/{name}.toml).", {"name": name})
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConceptInvalid(f"{FOLDER}/{name}.toml is over {MAX_BYTES} bytes: not a concept.", {"name": name})
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConceptInvalid(f"{FOLDER}/{name}.toml cannot be read ({exc}).", {"name": name}) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConceptInvalid(f"{FOLDER}/{name}.toml is not valid TOML: {exc}.", {"name": name}) from None
    except RecursionError:  # tomllib recurses per nesting level: a hand-made `x = [[[[...` of 64 KiB
        raise ConceptInvalid(f"{FOLDER}/{name}.toml nests arrays or tables too deeply: not a concept.",
                             {"name": name}) from None
    # On disk each field is its own table at the top ([subject], ...) beside [render]: what an artist edits.
    unknown = sorted(set(data) - {*ALL_FIELDS, "render"})
    if unknown:
        raise ConceptInvalid(f"{FOLDER}/{name}.toml has unknown table(s) {', '.join(unknown)}; its tables are the "
                             f"fields ({', '.join(ALL_FIELDS)}) and [render].", {"name": name, "unknown": unknown})
    try:
        return Concept.model_validate({"fields": {k: v for k, v in data.items() if k in ALL_FIELDS},
                                       "render": data.get("render", {})})
    except ValidationError as exc:
        raise ConceptInvalid(f"{FOLDER}/{name}.toml is invalid: {_problems(exc)}. Its tables are the fields "
                             f"({', '.join(ALL_FIELDS)}) and [render].", {"name": name}) from None


def render_toml(concept: Concept) -> str:
    fields = concept.fields
    tables: dict[str, dict] = {}
    for field in ALL_FIELDS:
        tables[field] = getattr(fields, field).model_dump(mode="json")
    render = concept.render.model_dump(mode="json", exclude_none=True)
    if "loras" in render:
        render["loras"] = [{k: v for k, v in lora.items() if v is not None} for lora in render["loras"]]
    tables["render"] = render
    return toml_out.document({}, tables, HEADER)


def write(root: Path, name: str, concept: Concept, *, new: bool = False) -> None:
    path = concept_file(root, name)
    if new and path.exists():
        raise ConceptExists(f"A concept {name!r} already exists ({FOLDER}/{name}.toml): change it with PUT "
                            f"/concepts/{name}, or pick another name.", {"name": name})
    if not new and not path.is_file():
        raise ConceptNotFound(f"No concept {name!r} in the project ({FOLDER}/{name}.toml).", {"name": name})
    inside(root, path.parent)
    write_text(path, render_toml(concept))
