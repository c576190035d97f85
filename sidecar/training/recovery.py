"""Recovery after a daemon restart: a run that was training when the daemon stopped is marked
`interrupted` with its last checkpoint, after its orphaned trainer process is stopped and the
checkpoints it wrote meanwhile are adopted; `POST /loras/{id}/resume` continues it. The manager
decides when (at start-up); this module says what the run becomes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sidecar.sqlite_store import now_iso
from sidecar.training import checkpoints as files
from sidecar.training.adapters import adapter_for
from sidecar.training.kohya import stop_orphan
from sidecar.training.spec import TrainSpec
from sidecar.training.store import CheckpointRecord, RunRecord, TrainingStore


async def interrupt_after_restart(store: TrainingStore, run: RunRecord) -> dict[str, Any]:
    """Stop the run's orphaned trainer, adopt its new checkpoints; the fields of its `interrupted` state."""
    await asyncio.to_thread(stop_orphan, run.pid)
    await adopt_files(store, run)
    last = max((c.step for c in run.checkpoints), default=None)
    where = f"its last checkpoint is step {last}" if last else "no checkpoint had been saved"
    return {"finished_at": now_iso(), "pid": None, "error_code": "interrupted",
            "error_message": f"The daemon stopped while this run was training; {where}. "
                             f"POST /loras/{run.id}/resume continues it.",
            "error_details": {"lastCheckpointStep": last}}


async def adopt_files(store: TrainingStore, run: RunRecord) -> None:
    """Checkpoints written while the daemon was down (an orphaned trainer kept going) join the run."""
    spec = TrainSpec.from_dict(run.spec)
    known = {c.step for c in run.checkpoints}
    adapter = adapter_for("ai-toolkit" if spec.trainer == "ai-toolkit" else "kohya")  # embedded: kohya's names
    for f in await asyncio.to_thread(adapter.checkpoints, Path(run.output_dir), spec.output_name):
        if f.step not in known:
            ckpt = CheckpointRecord(run.id, f.step, str(f.path), str(f.state) if f.state else None)
            await store.add_checkpoint(ckpt)
            run.checkpoints.append(ckpt)


def reattaches(run: RunRecord) -> bool:
    """A remote run whose machine may still be training: it is queued again at once to re-attach (or to
    resume on a new machine), instead of waiting, billed, for a `resume`."""
    from sidecar.remote.state import RemoteState

    state = RemoteState.from_dict(run.remote)
    return run.engine == "remote" and state is not None and state.live


def detached(run: RunRecord) -> bool:
    """An interrupted remote run the daemon left training when it stopped (`detached`): the next start
    follows it again, as the stop promised, instead of the reaper destroying its machine."""
    from sidecar.remote.state import RemoteState

    state = RemoteState.from_dict(run.remote)
    return run.engine == "remote" and state is not None and state.state == "detached" and state.live


def resume_point(run: RunRecord, spec: TrainSpec) -> tuple[int, Path] | None:
    """Where a run resumes from: kohya's newest complete state folder, the embedded trainer's state, or
    ai-toolkit's newest checkpoint (which it resumes from by itself). Blocking."""
    if spec.trainer == "ai-toolkit":
        point = adapter_for("ai-toolkit").resume_point(Path(run.output_dir), spec.output_name)
        return (point.step, point.state_path) if point else None
    engine = "kohya" if run.engine == "remote" else run.engine
    return files.latest_state(Path(run.output_dir), spec.output_name,
                              files.STATE_FILES.get(engine, ("train_state.json",)))
