"""The one device lock: generation and training never run at once.

Generation jobs take `Device.lock` one at a time (FIFO through the job queue). A training run
registers itself in `Device.training` as soon as it is queued, so `POST /jobs` can answer 409
`training_in_progress` at once instead of waiting for hours, then takes the same lock (after any
running generation job) and holds it until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class Device:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    training: TrainingGate = field(default_factory=TrainingGate)
    busy_with: str | None = None  # "job:<id>" or "training:<id>" while the lock is held
