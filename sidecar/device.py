"""The one device lock and the one gate in front of it: generation and training never run at once.

Generation jobs take `Device.lock` one at a time (FIFO through the job queue). A training run
registers itself in `Device.training` as soon as it is queued, then takes the same lock (after any
running generation job) and holds it until it ends. While one is registered, `refuse_if_training`
answers a new generation job *and* a new training at once, with one message (`busy_message`), instead
of letting them wait for hours. Shared by `sidecar.jobs` and `sidecar.training`, so it belongs to
neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import TrainingInProgress
from sidecar.eta import format_eta


@dataclass
class TrainingGate:
    """Which training run (if any) is queued or running. `progress` returns the run's live
    summary: `{"id", "status", "step", "total", "etaSeconds"}`."""

    run_id: str | None = None
    progress: Callable[[], dict[str, Any]] | None = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def open(self, run_id: str, progress: Callable[[], dict[str, Any]]) -> None:
        self.run_id = run_id
        self.progress = progress

    def close(self, run_id: str) -> None:
        if self.run_id == run_id:
            self.run_id = None
            self.progress = None

    def summary(self) -> dict[str, Any] | None:
        if self.run_id is None:
            return None
        if self.progress is None:
            return {"id": self.run_id}
        return self.progress()

    def refuse_if_training(self) -> None:
        """The gate: 409 `training_in_progress` while a training run is queued or running."""
        training = self.summary()
        if training is not None:
            raise TrainingInProgress(busy_message(training), {"training": training})


def busy_message(training: dict[str, Any]) -> str:
    """What every refusal says while a training holds the device, from the run's summary (as
    `TrainingGate.summary` and `GET /health`'s `training` give it)."""
    return (f"LoRA training {training.get('id', '?')} holds the device ({training.get('status', 'queued')}, step "
            f"{training.get('step', 0)}/{training.get('total', '?')}, {format_eta(training.get('etaSeconds'))}); "
            "no generation and no other training until it ends.")


@dataclass
class Device:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    training: TrainingGate = field(default_factory=TrainingGate)
    busy_with: str | None = None  # "job:<id>" or "training:<id>" while the lock is held
