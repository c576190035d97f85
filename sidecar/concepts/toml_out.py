"""Writing the few TOML shapes concepts and page prompt files need: strings, numbers, booleans, lists of
them, inline tables of them, and tables of those. The standard library reads TOML but does not write it,
and these shapes do not warrant a dependency: a string is written as a JSON string, which is a TOML
basic string (the same escapes; control characters as \\uXXXX), so every value reads back as it was
(tests/test_concepts_model.py reads each written file back with `tomllib`).
"""

from __future__ import annotations

import json
import math
from typing import Any


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} has no TOML form here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"{type(v).__name__} has no TOML form here")


def key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def document(top: dict[str, Any], tables: dict[str, dict[str, Any]], comment: str = "") -> str:
    """`top` keys first, then each `[table]` (None values left out: TOML has no null)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{key(k)} = {value(v)}" for k, v in top.items() if v is not None]
    for name, table in tables.items():
        lines += ["", f"[{key(name)}]"]
        lines += [f"{key(k)} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"
