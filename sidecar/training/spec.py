"""What a training run is, as both trainers (kohya adapter, embedded) see it, and what they report.

`TrainSpec` is the resolved request (defaults applied, seed chosen); `TrainJob` adds where things
live; `TrainerHooks` is how a trainer reports progress, checkpoints and log lines and learns of a
cancel. Trainers raise `JobFailed(code="training_failed")` or `JobCancelled`; they never touch
the store or the device lock (the manager owns those).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sidecar.errors import JobFailed
from sidecar.training.dataset import Dataset
from sidecar.training.wire import TrainRequest

TRAINING_FAILED = "training_failed"


@dataclass
class TrainSpec:
    output_name: str
    dataset_dir: str
    steps: int
    resolution: int
    network_dim: int
    network_alpha: float
    learning_rate: float
    save_every: int
    seed: int
    engine: str  # "kohya" | "embedded" | "ai-toolkit" | "remote" (where: here with that trainer, or there)
    trigger_word: str
    checkpoint: str  # base model file name
    # Where it trains when not here: the resolved `remote` settings (`sidecar.remote.providers.resolve`).
    remote: dict[str, Any] | None = None
    # Issue 28 (older records lack them: the defaults are what those runs were).
    trainer: str = "kohya"  # "kohya" | "ai-toolkit" | "embedded": which adapter, here or there
    family: str = "sd15"
    base_model_ref: str | None = None  # a hub id or a path on the training machine, passed as given
    sample_prompts: list[str] = field(default_factory=list)
    sample_every: int | None = None  # None: at every save
    tracking: str | None = None  # "tensorboard" | "wandb"
    # What a preset (or the request) set beyond the canonical config; None: the trainer's default.
    preset: str | None = None
    force: bool = False  # trained past the quality gate's findings
    repeats: int | None = None
    caption_dropout_rate: float | None = None
    train_text_encoder: bool | None = None
    text_encoder_lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_request(cls, req: TrainRequest, where: Any, **resolved: Any) -> TrainSpec:
        """The request (its preset already resolved), where it trains (`placement.Placement`: resolution, trainer,
        family, base model) and what admission resolved: dataset_dir, engine, trigger_word, checkpoint, remote, seed."""
        return cls(output_name=req.output_name, steps=req.steps, network_dim=req.network_dim,
                   resolution=where.resolution, trainer=where.trainer, family=where.family,
                   base_model_ref=where.base_model_ref,
                   network_alpha=req.network_alpha, learning_rate=req.learning_rate, save_every=req.save_every_n_steps,
                   tracking=req.tracking, sample_prompts=list(req.sample_prompts), sample_every=req.sample_every,
                   preset=req.preset, force=req.force, repeats=req.repeats,
                   caption_dropout_rate=req.caption_dropout_rate, train_text_encoder=req.train_text_encoder,
                   text_encoder_lr=req.text_encoder_lr, **resolved)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        spec = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if "trainer" not in data and spec.engine == "embedded":
            spec.trainer = "embedded"
        return spec

    @property
    def sample_interval(self) -> int:
        return self.sample_every or self.save_every


@dataclass
class ResumePoint:
    step: int
    state_path: Path  # kohya: a `*-state` folder; embedded: its state file


@dataclass
class TrainJob:
    run_id: str
    spec: TrainSpec
    dataset: Dataset
    work_dir: Path  # the run's folder: train.log, the kohya staging dir
    output_dir: Path  # checkpoints and the final LoRA
    base_model: Path
    resume: ResumePoint | None = None
    remote: dict[str, Any] | None = None  # the remote machine's persisted state (`RemoteState`), to re-attach

    @property
    def final_file(self) -> Path:
        return self.output_dir / f"{self.spec.output_name}.safetensors"

    def step_file(self, step: int) -> Path:
        return self.output_dir / f"{self.spec.output_name}-step{step:08d}.safetensors"


@dataclass
class TrainResult:
    final_file: Path
    step: int


@dataclass
class TrainerHooks:
    """Callbacks a trainer calls on the event loop (thread-based trainers hop back to it first)."""

    progress: Callable[[int, int, float | None], None]  # step, total, loss
    checkpoint: Callable[[int, Path, Path | None], None]  # step, LoRA file, state (for resume) or None
    log: Callable[[str], None]
    warning: Callable[[str], None]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    started: Callable[[int], None] | None = None  # the trainer's process (group) id, for orphan clean-up
    device: Callable[[str], None] | None = None  # the device the trainer computes on, once known
    remote: Callable[[dict[str, Any]], None] | None = None  # a remote trainer's machine state changed
    stopping: Callable[[], bool] | None = None  # the cancel comes from the daemon stopping, not the user


class Trainer(Protocol):
    name: str

    async def run(self, job: TrainJob, hooks: TrainerHooks) -> TrainResult: ...


def training_failed(message: str, reason: str, **details: Any) -> JobFailed:
    """A run's failure: `reason` (crash, no_data, nan_loss, no_output, ...) lets clients tell them apart."""
    return JobFailed(message, {"reason": reason, **details}, code=TRAINING_FAILED)
