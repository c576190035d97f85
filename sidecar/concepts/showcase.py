"""The Explorer's LoRA showcase: a few fixed prompts per LoRA, rendered once and remembered by the LoRA
file's SHA-256 and what it was rendered with (`settings_key`: every resolved job parameter, so the
checkpoint, size, steps, strength and prompts), so opening the Explorer again shows the same images without a
render, and a LoRA file replaced under the same name (a new training run promoted) is rendered anew.

The cache is one JSON file in the daemon's data dir (`explorer/showcase.json`): LoRA id -> its file's
digest, the checkpoint, the prompts, the seed and the jobs. The jobs' images are the daemon's own (jobs
removed by retention make the entry stale too). Blocking: call from a thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from sidecar.atomic import write_text
from sidecar.concepts.fields import Wire

SEED = 20_240_601  # one fixed seed: every LoRA's showcase is comparable with every other's
PROMPTS = {
    "tags": ["{trigger}, 1girl, upper body, portrait, looking at viewer, simple background",
             "{trigger}, 1boy, full body, standing, city street, day",
             "{trigger}, scenery, rooftop, dusk, no humans"],
    "sentence": ["{trigger}. A portrait of a young woman looking at the viewer, plain background.",
                 "{trigger}. A young man standing in a city street by day, full body.",
                 "{trigger}. A rooftop at dusk, no people."],
}


class ShowcaseEntry(Wire):
    sha256: str | None = Field(description="the LoRA file's digest when it was rendered (null: not on this machine)")
    checkpoint: str | None
    prompts: list[str]
    seed: int
    strength: float | None = None
    # Null in a cache written before the key was kept: such an entry is never fresh (rendered again once).
    settings_key: str | None = Field(None, description="SHA-256 of the jobs' resolved parameters")
    group_id: str
    jobs: list[str]


class ShowcaseCache(Wire):
    loras: dict[str, ShowcaseEntry] = Field(default_factory=dict)


def prompts_for(trigger: str, style: str) -> list[str]:
    return [p.format(trigger=trigger) for p in PROMPTS["sentence" if style == "sentence" else "tags"]]


def cache_file(data_dir: Path) -> Path:
    return data_dir / "explorer" / "showcase.json"


def read(data_dir: Path) -> ShowcaseCache:
    path = cache_file(data_dir)
    try:
        return ShowcaseCache.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return ShowcaseCache()
    except (OSError, ValueError, ValidationError):
        return ShowcaseCache()  # a cache: a damaged one is rendered again, never an error


def write(data_dir: Path, cache: ShowcaseCache) -> None:
    write_text(cache_file(data_dir), cache.model_dump_json(by_alias=True, indent=2) + "\n")


def settings_key(params: Iterable[dict[str, Any]]) -> str:
    """One digest of the showcase jobs' resolved parameters (prompt, seed, steps, size, checkpoint, LoRA
    strengths, ...): a showcase asked with any other setting is not the cached one."""
    text = json.dumps(list(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def fresh(entry: ShowcaseEntry | None, sha256: str | None, key: str) -> bool:
    """The entry still shows this LoRA file rendered with these settings."""
    return entry is not None and entry.sha256 == sha256 and entry.settings_key == key
