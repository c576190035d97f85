"""A run's files on disk, named the way kohya names them, for both trainers.

`NAME-step00000200.safetensors` at every save step, `NAME.safetensors` at the end, and a state
folder (`NAME-step00000200-state/` from kohya, `NAME-state/` from the embedded trainer) holding
`train_state.json` with the step it can resume from. Torch-free: the manager and the CLI use it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

STEP_FILE = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})\.safetensors$")
# What a state folder needs before a resume can use it. kohya writes train_state.json first, then the
# weights, optimizer and scheduler; the embedded trainer swaps its folder in whole.
STATE_FILES = {
    "kohya": ("train_state.json", "model.safetensors", "optimizer.bin", "scheduler.bin"),
    "embedded": ("train_state.json", "trainer_state.pt"),
}
STATE_FILES["remote"] = STATE_FILES["kohya"]  # kohya on another machine; its states are pulled here


@dataclass(frozen=True)
class StepFile:
    step: int
    path: Path
    state: Path | None  # its state folder, when one was saved beside it


def step_file_name(name: str, step: int) -> str:
    return f"{name}-step{step:08d}.safetensors"


def state_dir_for(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + "-state")


def safetensors_ok(path: Path) -> bool:
    """A cheap completeness check: the header parses and the file is as long as it says."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + size + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def step_files(output_dir: Path, name: str) -> list[StepFile]:
    """Complete step checkpoints of `name` in `output_dir`, oldest first."""
    found: list[StepFile] = []
    if not output_dir.is_dir():
        return found
    for path in output_dir.glob(f"{name}-step*.safetensors"):
        m = STEP_FILE.match(path.name)
        if m is None or m.group("name") != name or not safetensors_ok(path):
            continue
        state = state_dir_for(path)
        found.append(StepFile(int(m.group("step")), path, state if state.is_dir() else None))
    return sorted(found, key=lambda f: f.step)


def state_step(state: Path) -> int | None:
    try:
        return int(json.loads((state / "train_state.json").read_text())["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_state(output_dir: Path, name: str, required: tuple[str, ...]) -> tuple[int, Path] | None:
    """The newest state folder of a run that holds every `required` file: (step, folder)."""
    best: tuple[int, Path] | None = None
    if not output_dir.is_dir():
        return None
    for state in output_dir.glob(f"{name}*-state"):
        if not state.is_dir() or not all((state / f).is_file() for f in required):
            continue
        step = state_step(state)
        if step is not None and (best is None or step > best[0]):
            best = (step, state)
    return best


def prune_states(output_dir: Path, name: str, required: tuple[str, ...]) -> Path | None:
    """Keep only the newest complete step state of a run, as kohya's `--save_last_n_steps_state` does on
    the machine that trains: states pulled from a remote run would otherwise pile up here (each holds the
    optimizer). Returns the one kept. Incomplete folders are left for `latest_state` to skip."""
    newest = latest_state(output_dir, name, required)
    if newest is None:
        return None
    for state in output_dir.glob(f"{name}-step*-state"):
        if state != newest[1] and state.is_dir() and all((state / f).is_file() for f in required):
            shutil.rmtree(state, ignore_errors=True)
    return newest[1]
