"""Installed LoRAs: listing a LoRA folder with the metadata read from each file's safetensors header.

kohya writes `ss_*` metadata (trigger word, steps, dim, alpha, base model, resolution); files without
it are still listed. Reading the header only (never the tensors) keeps `GET /loras` instant.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

LORA_SUFFIXES = (".safetensors",)
MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return {}
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER:
            return {}
        header = json.loads(f.read(size))
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _int(v: str | None) -> int | None:
    try:
        return int(float(v)) if v not in (None, "", "None") else None
    except ValueError:
        return None


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "None") else None
    except ValueError:
        return None


def trigger_word(meta: dict[str, str]) -> str | None:
    """kohya keeps no explicit trigger field; we write `ss_trigger_word`, else take the most frequent
    tag of the dataset's tag frequency (the trigger word is first in every caption)."""
    if meta.get("ss_trigger_word"):
        return meta["ss_trigger_word"]
    try:
        freq = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        return None
    best: tuple[int, str] | None = None
    for tags in freq.values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if best is None or count > best[0]:
                    best = (int(count), tag)
    return best[1] if best else None


def describe(path: Path) -> dict[str, Any]:
    try:
        meta = read_safetensors_metadata(path)
    except (OSError, ValueError):
        meta = {}
    res = meta.get("ss_resolution")
    return {
        "id": path.stem,
        "fileName": path.name,
        "sizeBytes": path.stat().st_size,
        "triggerWord": trigger_word(meta),
        "steps": _int(meta.get("ss_steps")) or _int(meta.get("ss_max_train_steps")),
        "networkDim": _int(meta.get("ss_network_dim")),
        "networkAlpha": _float(meta.get("ss_network_alpha")),
        "baseModel": meta.get("ss_base_model_version") or meta.get("ss_sd_model_name"),
        "resolution": res.strip("()").replace(", ", "x").replace(",", "x") if res else None,
        "metadata": {k: v for k, v in meta.items() if len(v) <= 2000},
    }


def list_loras(directory: Path | None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """LoRAs in `directory`; when only `names` are known (attached ComfyUI, no local dir), bare entries."""
    if directory is not None and directory.is_dir():
        files = sorted(p for p in directory.iterdir() if p.suffix in LORA_SUFFIXES and p.is_file())
        return [describe(p) for p in files]
    return [
        {"id": Path(n).stem, "fileName": n, "sizeBytes": 0, "metadata": {}}
        for n in sorted(names or [])
    ]
