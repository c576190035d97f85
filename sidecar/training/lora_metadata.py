"""Installed LoRAs: a LoRA folder listed with the metadata read from each file's safetensors header.

kohya (and our embedded trainer) write `ss_*` metadata (steps, dim, alpha, base model, resolution,
tag frequencies) and `modelspec.*` keys; files without any are still listed. Reading the header only,
never the tensors, keeps `GET /loras` instant on 75 MB files. Checkpoints staged for a sweep
(`staging.py`, `sweep--*`) are not installed LoRAs and are not listed.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sidecar.config import Settings
from sidecar.errors import InvalidField

LORA_SUFFIXES = (".safetensors",)
STAGED_PREFIX = "sweep--"  # checkpoints staged for a sweep (`staging.py`) carry this prefix
METADATA_CONCURRENCY = 8  # /view_metadata requests in flight at once
MAX_HEADER = 100 * 1024 * 1024  # a larger header is not a safetensors file we wrote or kohya did


def lora_dir(settings: Settings, override: Path | None = None) -> Path:
    """Where installed LoRAs live: ComfyUI's `models/loras/` when it is configured, else ours."""
    if override is not None:
        return override
    if settings.comfyui_dir is not None:
        return settings.comfyui_dir / "models" / "loras"
    if settings.comfyui_url is not None:
        raise InvalidField(
            "The daemon attaches to a ComfyUI at a URL, so its LoRA folder is unknown here: set comfyui_dir "
            "(SIDECAR_COMFYUI_DIR) or pass --loras-dir (lorasDir).", {"field": "loras_dir"})
    return settings.models_path / "loras"


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
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in meta.items()}


def _number(value: str | None, kind: type) -> Any:
    if value in (None, "", "None"):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (ValueError, OverflowError):  # "nan" and "inf" are no count either
        return None


def _first_number(kind: type, *values: str | None) -> Any:
    """The first of `values` that is a number (0 included: a LoRA saved before its first step has 0)."""
    return next((n for v in values if (n := _number(v, kind)) is not None), None)


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
    """The fields a person asks about, from the raw metadata."""
    res = meta.get("ss_resolution") or meta.get("modelspec.resolution")
    return {
        "triggerWord": trigger_word(meta),
        "steps": _first_number(int, meta.get("ss_steps"), meta.get("ss_max_train_steps")),
        "networkDim": _number(meta.get("ss_network_dim"), int),
        "networkAlpha": _number(meta.get("ss_network_alpha"), float),
        "baseModel": meta.get("ss_base_model_version") or meta.get("ss_sd_model_name"),
        "resolution": res.strip("()").replace(", ", "x").replace(",", "x") if res else None,
    }


def describe(path: Path) -> dict[str, Any]:
    try:
        meta = read_lora_metadata(path)
    except (OSError, ValueError):
        meta = {}  # listed all the same: ComfyUI would offer it too
    return {
        "id": path.stem,
        "fileName": path.name,
        "sizeBytes": path.stat().st_size,
        **summary(meta),
        "metadata": {k: v for k, v in meta.items() if len(v) <= 2000},
    }


async def list_served_loras(names: list[str],
                            metadata: Callable[[str], Awaitable[dict[str, str] | None]] | None) -> list[dict[str, Any]]:
    """LoRAs known only by name (an attached ComfyUI, no local dir), with the metadata `metadata(name)`
    returns (ComfyUI's `/view_metadata/loras`, which reads the header only). The size is not known."""
    shown = sorted(n for n in names if not Path(n).name.startswith(STAGED_PREFIX))
    gate = asyncio.Semaphore(METADATA_CONCURRENCY)

    async def one(name: str) -> dict[str, str]:
        if metadata is None or not name.endswith(LORA_SUFFIXES):
            return {}
        async with gate:
            return await metadata(name) or {}

    metas = await asyncio.gather(*(one(n) for n in shown))
    return [{"id": Path(n).stem, "fileName": n, "sizeBytes": None, **summary(meta),
             "metadata": {k: v for k, v in meta.items() if len(v) <= 2000}}
            for n, meta in zip(shown, metas, strict=True)]


def list_loras(directory: Path | None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """LoRAs in `directory`; when only `names` are known (attached ComfyUI, no local dir), bare entries."""
    if directory is not None and directory.is_dir():
        files = sorted(p for p in directory.iterdir()
                       if p.suffix in LORA_SUFFIXES and p.is_file() and not p.name.startswith(STAGED_PREFIX))
        return [describe(p) for p in files]
    return [
        {"id": Path(n).stem, "fileName": n, "sizeBytes": 0, "metadata": {}}
        for n in sorted(names or []) if not Path(n).name.startswith(STAGED_PREFIX)
    ]
