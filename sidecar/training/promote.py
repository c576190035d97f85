"""Promote: install one checkpoint of a run as the character's LoRA (LORA-03), never overwriting.

The file is copied (not moved: the run keeps its checkpoints) into the LoRA folder generation
uses, ComfyUI's `models/loras/` when configured (see `lora_metadata.lora_dir`), under the run's output
name or a name given. The copy lands under a temporary name and is hard-linked into place, which
fails rather than replaces when the name is taken.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import CheckpointFileMissing, InvalidField, InvalidState, LoraExists
from sidecar.training.store import RunRecord
from sidecar.training.wire import NAME_PATTERN


@dataclass
class Promoted:
    path: Path
    lora_id: str
    step: int
    already: bool  # the same file was already installed under that name


def choose(run: RunRecord, step: int | None) -> tuple[int, Path]:
    """The checkpoint file of `step` (None: the final LoRA)."""
    if step is None:
        if run.status != "succeeded" or not run.final_file:
            steps = ", ".join(str(c.step) for c in run.checkpoints) or "none"
            raise InvalidState(f"Run {run.id} has no final LoRA ({run.status}); pass --step (saved: {steps}).",
                               {"runId": run.id})
        return run.step, Path(run.final_file)
    for c in run.checkpoints:
        if c.step == step:
            return step, Path(c.path)
    if run.final_file and run.status == "succeeded" and step == run.step:
        return step, Path(run.final_file)
    steps = ", ".join(str(c.step) for c in sorted(run.checkpoints, key=lambda c: c.step)) or "none"
    raise InvalidField(f"Run {run.id} has no checkpoint at step {step}; saved steps: {steps}.",
                       {"field": "step", "available": [c.step for c in run.checkpoints]})


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def promote(run: RunRecord, step: int | None, loras_dir: Path, name: str | None = None) -> Promoted:
    name = name or run.spec["output_name"]
    if not re.match(NAME_PATTERN, name):
        raise InvalidField(f"--name {name!r} must be a plain file name (letters, digits, . _ -).", {"field": "name"})
    step, source = choose(run, step)
    if not source.is_file():
        raise CheckpointFileMissing(f"The checkpoint file {source} no longer exists.", {"file": str(source)})
    loras_dir.mkdir(parents=True, exist_ok=True)
    target = loras_dir / f"{name}.safetensors"
    if target.exists():
        if _digest(target) == _digest(source):
            return Promoted(target, name, step, already=True)
        raise LoraExists(f"{target} already exists and is another file; it is not overwritten. Choose another "
                           "--name (e.g. with a version suffix) or remove it yourself.", {"file": str(target)})
    tmp = loras_dir / f".{name}.safetensors.promote-tmp"
    shutil.copyfile(source, tmp)
    try:
        os.link(tmp, target)  # fails if the name was taken meanwhile: never replaces
    except FileExistsError:
        raise LoraExists(f"{target} appeared while copying; it is not overwritten.", {"file": str(target)}) from None
    except OSError:  # no hard links on this file system: checked just above, so a rename is as good
        if target.exists():
            raise LoraExists(f"{target} appeared while copying; it is not overwritten.",
                               {"file": str(target)}) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Promoted(target, name, step, already=False)
