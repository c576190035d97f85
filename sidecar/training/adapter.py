"""The one small interface every process trainer (kohya's sd-scripts, ostris ai-toolkit) implements, so the
run here (`kohya.ProcessTrainer`) and the run on another machine (`remote/`) drive any of them the same way.

An adapter knows its trainer, nothing about where it runs:
- `launch`: the canonical request (`TrainJob`, its paths those of the machine that trains) as the trainer's
  script, arguments and the files it reads (ai-toolkit's job config, kohya's sample prompts);
- `parser`: its console output as progress events (step, total, loss, ETA, saves) and errors;
- its files: where it writes checkpoints (`output_dir`), their names (`step_file_name`, `step_of`), the ones
  it finished (`checkpoints`), which a resume starts from (`resume_point`), and its samples per step.
Starting it detached and stopping it are the same for every trainer (its own process group, SIGTERM then
SIGKILL; `setsid` on a remote machine) and live with the runners, not here. The embedded trainer runs in
this process and stays behind the smaller `spec.Trainer` protocol (run, cancel through its hooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sidecar.training.checkpoints import StepFile
from sidecar.training.parser import BarUpdate, CheckpointSaved, TrainerError
from sidecar.training.spec import ResumePoint, TrainJob

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Launch:
    """What starts a trainer: `python -u SCRIPT ARGS` in the trainer's folder, after `files` (name in the run
    folder -> text) are written there."""

    script: str
    args: list[str]
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class OutputParser(Protocol):
    offset: int
    last: BarUpdate | None
    no_data: bool
    nan_seen: bool
    device: str | None

    def feed(self, data: bytes) -> list[BarUpdate | CheckpointSaved]: ...
    def close(self) -> list[BarUpdate | CheckpointSaved]: ...
    def take_lines(self) -> list[str]: ...
    @property
    def error(self) -> TrainerError | None: ...
    @property
    def tail(self): ...  # the last log lines, bar redraws left out


class TrainerAdapter(Protocol):
    name: str  # the request's `trainer`
    families: tuple[str, ...]
    marker: str  # a word of its command line: an orphan is stopped only when its command has it

    def script(self, family: str) -> str: ...
    def label(self, family: str) -> str: ...  # how messages name it: "kohya's train_network.py"
    def output_dir(self, run_dir: Path, name: str) -> Path: ...
    def launch(self, job: TrainJob, device: str, tokenizer_cache: Path | None) -> Launch: ...
    def parser(self, start_step: int, name: str) -> OutputParser: ...
    def step_file_name(self, name: str, step: int) -> str: ...
    def step_of(self, file_name: str, name: str) -> int | None: ...
    def state_for(self, checkpoint: Path) -> Path | None: ...
    def checkpoints(self, output_dir: Path, name: str) -> list[StepFile]: ...  # complete ones, oldest first
    def resume_point(self, output_dir: Path, name: str) -> ResumePoint | None: ...
    def samples_dir(self, output_dir: Path) -> Path: ...
    def sample_step(self, file_name: str, name: str) -> int | None: ...


def samples_by_step(adapter: TrainerAdapter, output_dir: Path, name: str) -> dict[int, list[str]]:
    """Sample images the trainer wrote, by the step they show, as paths relative to the run's output folder.
    Blocking: call in a thread."""
    folder = adapter.samples_dir(output_dir)
    out: dict[int, list[str]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        # A link is never a sample: served by GET /loras/{id}/samples/{file} and copied into a publish
        # bundle, it could lead anywhere on this machine.
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        step = adapter.sample_step(path.name, name)
        if step is not None:
            out.setdefault(step, []).append(path.relative_to(output_dir).as_posix())
    return out
