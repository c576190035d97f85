"""A training run while it is queued or trains: what lives only in memory (its progress tracker, log tail,
cancel event, writes in flight) and the hooks its trainer reports through. A report changes the live
record at once, is announced, and is written to the store in the background; a run's end waits for
those writes (`drain`) so its last state is never overtaken by an older one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.training.adapter import samples_by_step
from sidecar.training.adapters import adapter_for
from sidecar.training.loss_history import LossRecorder
from sidecar.training.progress import ProgressTracker
from sidecar.training.spec import TrainerHooks, TrainSpec
from sidecar.training.store import CheckpointRecord, RunRecord, TrainingStore
from sidecar.training.views import finite

log = logging.getLogger("sidecar.training")

PROGRESS_PERSIST_INTERVAL = 2.0
LOG_TAIL_LINES = 40
CPU_WARNING = ("The trainer runs on the CPU, not MPS or CUDA: a full run takes many hours. Check the trainer's "
               "torch (kohya's venv, or this daemon's) sees the GPU before a long run.")


@dataclass
class LiveRun:
    """A queued or running run: its record plus what only lives in memory."""

    record: RunRecord
    tracker: ProgressTracker
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown: bool = False  # cancelled because the daemon stops: the run becomes `interrupted`
    last_persist: float = 0.0
    pending: set[asyncio.Task] = field(default_factory=set)  # checkpoint rows being written
    losses: LossRecorder | None = None  # the loss by step, into the run's loss.csv
    on_end: Callable[[], Coroutine[Any, Any, Any]] | None = None  # a last look for what the trainer wrote

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A write for this run in the background; `drain` waits for all of them before the run ends."""
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def drain(self) -> None:
        if self.on_end is not None:
            self.spawn(self.on_end())
        if self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


Announce = Callable[[RunRecord, str, LiveRun], None]  # (run, event kind, live): publishes training.<kind>


def trainer_hooks(live: LiveRun, store: TrainingStore, announce: Announce) -> TrainerHooks:
    """What the trainer reports through: each report updates the live record at once and is written
    in the background (progress at most every PROGRESS_PERSIST_INTERVAL and at the last step)."""
    run = live.record

    def progress(step: int, total: int, loss: float | None) -> None:
        live.tracker.update(step, total, loss)
        run.step, run.total = live.tracker.step, live.tracker.total
        run.loss, run.loss_smoothed = live.tracker.loss_last, live.tracker.loss_smoothed
        if live.losses is not None:
            live.losses.add(live.tracker.step, loss, live.tracker.loss_smoothed)
        now = time.monotonic()
        if now - live.last_persist >= PROGRESS_PERSIST_INTERVAL or step == total:
            live.last_persist = now
            if live.losses is not None:
                live.spawn(live.losses.flush())
            live.spawn(store.update(run.id, step=run.step, total=run.total, loss=finite(run.loss),
                                                loss_smoothed=finite(run.loss_smoothed)))
        announce(run, "progress", live)

    async def collect_samples() -> None:
        """The sample images the trainer wrote (kohya before a save, ai-toolkit after it), recorded by step."""
        spec = TrainSpec.from_dict(run.spec)
        if not spec.sample_prompts:
            return
        found = await asyncio.to_thread(samples_by_step, adapter_for(spec.trainer), Path(run.output_dir),
                                        spec.output_name)
        new = {step: [f for f in names if f not in run.samples.get(step, [])] for step, names in found.items()}
        new = {step: names for step, names in new.items() if names}
        if new:
            for step, names in new.items():
                run.samples[step] = sorted(run.samples.get(step, []) + names)
            await store.add_samples(run.id, new)
            announce(run, "checkpoint", live)

    live.on_end = collect_samples

    def checkpoint(step: int, path: Path, state: Path | None) -> None:
        ckpt = CheckpointRecord(run.id, step, str(path), str(state) if state else None)
        run.checkpoints = [c for c in run.checkpoints if c.step != step] + [ckpt]
        live.spawn(store.add_checkpoint(ckpt))
        live.spawn(collect_samples())
        log.info("training run %s: checkpoint at step %d: %s", run.id, step, path.name)
        announce(run, "checkpoint", live)

    def log_line(line: str) -> None:
        live.tail.append(line)

    def warning(text: str) -> None:
        if text not in run.warnings:
            run.warnings.append(text)
            live.spawn(store.update(run.id, warnings=list(run.warnings)))

    def started(pid: int) -> None:
        run.pid = pid
        live.spawn(store.update(run.id, pid=pid))

    def device(name: str) -> None:
        # LORA-04: know the GPU is in use before committing to an hour of training.
        run.device = name
        live.spawn(store.update(run.id, device=name))
        log.info("training run %s: trainer computes on %s", run.id, name)
        if name == "cpu":
            warning(CPU_WARNING)

    def remote(state: dict[str, Any]) -> None:
        run.remote = state
        live.spawn(store.set_remote(run.id, state))
        announce(run, "progress", live)

    return TrainerHooks(progress=progress, checkpoint=checkpoint, log=log_line, warning=warning,
                        cancel=live.cancel, started=started, device=device, remote=remote,
                        stopping=lambda: live.shutdown)
