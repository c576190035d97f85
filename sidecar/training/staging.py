"""Staging: a run's checkpoint made loadable by a job for a while, without installing it.

The daemon and ComfyUI load LoRAs by file name from their LoRA folder, so a checkpoint a client wants
to render with (`sidecar loras sweep`) is hard-linked (copied where links are impossible) into that
folder under a name no installed LoRA uses, `sweep--<outputName>-<run8>-step00000200.safetensors`.
`GET /loras` does not list such files; `unstage` removes them. Only names with that prefix are ever
replaced or removed here, so an installed LoRA is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sidecar.atomic import replacing
from sidecar.errors import CheckpointFileMissing
from sidecar.training.lora_metadata import STAGED_PREFIX
from sidecar.training.promote import choose
from sidecar.training.store import RunRecord


@dataclass(frozen=True)
class Staged:
    path: Path
    lora_id: str
    step: int
    already: bool  # this checkpoint was already staged under that name


def run_prefix(run: RunRecord) -> str:
    """The start of every staged name of `run` (the run id keeps two runs of one name apart)."""
    return f"{STAGED_PREFIX}{run.spec['output_name']}-{run.id[:8]}-step"


def stage(run: RunRecord, step: int | None, loras_dir: Path) -> Staged:
    """Link checkpoint `step` (None: the final LoRA) of `run` into `loras_dir` under its staged name."""
    step, source = choose(run, step)
    if not source.is_file():
        raise CheckpointFileMissing(f"The checkpoint file {source} no longer exists.", {"file": str(source)})
    lora_id = f"{run_prefix(run)}{step:08d}"
    target = loras_dir / f"{lora_id}.safetensors"
    loras_dir.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.samefile(source):
            return Staged(target, lora_id, step, already=True)
        target.unlink()  # a stale staging of our own (the prefix is ours): link the current file
    try:
        os.link(source, target)
    except FileExistsError:  # staged by a concurrent request meanwhile: same checkpoint, same name
        return Staged(target, lora_id, step, already=True)
    except OSError:
        with replacing(target) as tmp:  # no hard links across disks or on this file system
            shutil.copyfile(source, tmp)
    return Staged(target, lora_id, step, already=False)


def unstage(run: RunRecord, step: int | None, loras_dir: Path) -> list[str]:
    """Remove the staged files of `run` (only `step`'s when given); the loraIds removed."""
    if not loras_dir.is_dir():
        return []
    prefix = run_prefix(run)
    wanted = f"{prefix}{step:08d}.safetensors" if step is not None else None
    removed = []
    for path in sorted(loras_dir.glob(f"{prefix}*.safetensors")):
        if wanted is None or path.name == wanted:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.stem)
    return removed
