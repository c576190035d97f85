"""Reading a LoRA file's metadata (the safetensors header's `__metadata__`) without loading tensors.

`read_lora_metadata(path)` is what `GET /loras` and the sweep use: kohya's `ss_*` keys and the
`modelspec.*` keys, all strings, as the file holds them. Reading only the header keeps it instant
on 75 MB files. `summary` picks the fields a person asks about (trigger word, steps, dim, alpha).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER = 100 * 1024 * 1024  # a larger header is not a safetensors file we wrote or kohya did


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` dict of a safetensors file ({} when it has none). Raises ValueError for a
    file that is not safetensors, OSError when it cannot be read."""
    with Path(path).open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER:
            raise ValueError(f"{path}: header of {size} bytes; not a safetensors file")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: the safetensors header is not JSON ({exc})") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _number(value: str | None, kind: type) -> Any:
    if value in (None, "", "None"):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return None


def trigger_word(meta: dict[str, str]) -> str | None:
    """Ours and kohya's `--metadata_trigger_phrase` write it; otherwise the most frequent tag of
    `ss_tag_frequency` (every caption starts with the trigger word)."""
    for key in ("ss_trigger_word", "modelspec.trigger_phrase"):
        if meta.get(key):
            return meta[key]
    try:
        freq = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        return None
    counts: dict[str, int] = {}
    for tags in freq.values() if isinstance(freq, dict) else []:
        if isinstance(tags, dict):
            for tag, n in tags.items():
                counts[tag] = counts.get(tag, 0) + int(n)
    return max(counts, key=lambda t: counts[t]) if counts else None


def summary(meta: dict[str, str]) -> dict[str, Any]:
    res = meta.get("ss_resolution") or meta.get("modelspec.resolution")
    return {
        "triggerWord": trigger_word(meta),
        "steps": _number(meta.get("ss_steps"), int),
        "networkDim": _number(meta.get("ss_network_dim"), int),
        "networkAlpha": _number(meta.get("ss_network_alpha"), float),
        "baseModel": meta.get("ss_base_model_version"),
        "resolution": res.strip("()").replace(", ", "x").replace(",", "x") if res else None,
    }
