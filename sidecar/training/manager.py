"""Training runs: queue, run, cancel, resume; one at a time, under the daemon's one device lock.
What is checked before a run is queued is `admission.py` and `placement.py` (where a family trains); what a
run that was training at a restart becomes is `recovery.py`; how a run looks to clients is `views.py`; a run
in memory while it trains and its hooks are `live.py`; which trainer an engine name means is `trainers.py`.

A run registers in the device's training gate as soon as it is queued (so `POST /jobs` answers 409
at once), waits for the lock behind any running generation job, then holds it until it ends.
Every status change is persisted before it is announced on the event bus. After a daemon restart
a run that was training is marked `interrupted` with its last checkpoint (an orphaned trainer
process is stopped first) and continues on `resume`. How a run trains is its trainer's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend
from sidecar.config import Settings
from sidecar.device import Device
from sidecar.errors import InvalidState, JobCancelled, SidecarError, TrainingNotFound
from sidecar.events import EventBus
from sidecar.profiles import Profile
from sidecar.sqlite_store import now_iso
from sidecar.statuses import RUN_ACTIVE, RUN_RESUMABLE
from sidecar.training import admission, placement, presets, recovery, staging
from sidecar.training.checkpoints import safetensors_ok
from sidecar.training.dataset import load_dataset
from sidecar.training.live import LiveRun, trainer_hooks
from sidecar.training.lora_metadata import lora_dir
from sidecar.training.loss_history import LossRecorder, loss_file
from sidecar.training.parser import read_log_tail
from sidecar.training.progress import ProgressTracker
from sidecar.training.promote import promote as install_checkpoint
from sidecar.training.trainers import TrainerFactory, default_trainer_factory
from sidecar.training.spec import ResumePoint, TrainJob, TrainSpec
from sidecar.training.store import RunRecord, TrainingStore, check_transition
from sidecar.training.views import finite, run_view
from sidecar.training.wire import (
    Promoted, PromoteRequest, StagedLora, StageRequest, TrainingEvent, TrainingRun, TrainRequest, UnstagedLoras,
    UnstageRequest,
)

log = logging.getLogger("sidecar.training")

STOP_TIMEOUT = 30.0  # how long shutdown waits for a trainer to stop before leaving it marked interrupted


class TrainingManager:
    def __init__(self, settings: Settings, profile: Profile, device: Device, events: EventBus, store: TrainingStore,
                 backend: GenerationBackend | None = None, trainer_factory: TrainerFactory | None = None,
                 gate: admission.Gate | None = None):
        self.gate = gate  # the dataset quality gate (`admission.Gate`)
        self.settings = settings
        self.profile = profile
        self.device = device
        self.events = events
        self.backend = backend
        self.store = store  # opened and closed by its owner (the app), before and after the manager
        self.trainer_factory = trainer_factory or default_trainer_factory(settings, backend)
        self.runs_dir = settings.data_dir / "training"
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._live: dict[str, LiveRun] = {}
        self._submit_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._reaper: asyncio.Task | None = None
        self._running: LiveRun | None = None

    # -- lifecycle
    async def start(self) -> None:
        await self._recover()
        self._task = asyncio.create_task(self._worker(), name="training-worker")
        # Instances of runs that are no longer active are destroyed (it may take network round trips: not
        # in the way of the start).
        self._reaper = asyncio.create_task(self._reap(), name="training-reaper")

    async def _reap(self) -> None:
        from sidecar.training.reaper import reap

        try:
            await reap(self.settings, self.store, self._keep_instances)
        except Exception:  # never fatal: logged, and tried again at the next start
            log.exception("the remote-instance reaper failed")

    def _keep_instances(self) -> dict[str, tuple[str | None, str | None]]:
        """run id -> (its instance, its remote state) for every queued or running run: the reaper spares them."""
        return {run_id: ((live.record.remote or {}).get("instance_id"), (live.record.remote or {}).get("state"))
                for run_id, live in self._live.items()}

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reaper
        running = self._running
        if running is not None:
            running.shutdown = True
            running.cancel.set()
        if self._task is not None:
            if running is not None:
                # Let the run end as `interrupted` (trainer stopped, state persisted) before cancelling.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_TIMEOUT):  # not wait_for: on 3.11 it can drop a cancel
                        await asyncio.shield(self._idle())
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _idle(self) -> None:
        while self._running is not None:
            await asyncio.sleep(0.05)

    async def _recover(self) -> None:
        for run in reversed(await self.store.list(("running", "queued", "interrupted"), limit=1000)):
            if run.status == "interrupted":
                if recovery.detached(run):
                    # Stopped with the daemon while its trainer went on there (SIGTERM): follow it again.
                    await self._requeue(run, "re-attached: it went on training while the daemon was stopped")
                continue
            if run.status == "running":
                await self._set(run, "interrupted", **await recovery.interrupt_after_restart(self.store, run))
                log.warning("training run %s was running when the daemon stopped: marked interrupted", run.id)
                if recovery.reattaches(run):
                    # Its machine may still be training (and billing): follow it again at once.
                    await self._requeue(run, "re-attached after a daemon restart")
            else:
                self._enqueue(run)
                log.info("training run %s re-queued after restart", run.id)

    # -- public API
    async def submit(self, req: TrainRequest) -> TrainingRun:
        s = self.settings
        engine = admission.check_request(req, s, self.profile)
        remote = admission.check_remote(req, s)
        async with self._submit_lock:
            self.device.training.refuse_if_training()
            trigger = req.trigger_word or s.trigger_word
            if req.base_model is not None:  # a hub id or a path on the training machine: passed as given
                base = Path(req.base_model).expanduser()
            else:
                base = await admission.find_base_model(s, self.backend, req.checkpoint or s.checkpoint)
            placement.fit_remote(remote, where := await placement.place(s, self.profile, req, engine, base))
            req = await admission.preset_and_gate(  # before the run is queued: before a remote run rents anything
                req, where.family, where.trainer, trigger, self.gate)
            dataset = await asyncio.to_thread(load_dataset, Path(req.dataset_dir), trigger, None, req.repeats)
            spec = TrainSpec.of_request(
                req, where, dataset_dir=str(dataset.root), engine=engine, trigger_word=trigger, checkpoint=base.name,
                remote=remote, seed=req.seed if req.seed is not None else random.randrange(2**32))
            run_id = uuid.uuid4().hex
            work = self.runs_dir / run_id
            output = work / "output" / req.output_name if where.trainer == "ai-toolkit" else work / "output"
            run = RunRecord(id=run_id, status="queued", engine=engine, spec=spec.to_dict(), work_dir=str(work),
                            output_dir=str(output), base_model=str(base), total=spec.steps,
                            warnings=list(dataset.warnings) + list(where.warnings)
                            + (presets.embedded_warnings(req) if where.trainer == "embedded" else []))
            await self.store.insert(run)
            self._enqueue(run)
        log.info("training run %s queued (%s, %d steps, dataset %s)", run_id, engine, spec.steps, spec.dataset_dir)
        self._announce(run, "queued", self._live.get(run_id))
        return self.to_api(run, self._live.get(run_id))

    async def estimate(self, req: TrainRequest):
        """Steps, time here and there, cost and the offer a run of `req` would rent (nothing is rented)."""
        from sidecar.training.estimate import estimate

        return await estimate(self.settings, self.store, req, self.profile, self.backend)

    async def get(self, run_id: str) -> TrainingRun:
        live = self._live.get(run_id)
        if live is not None:
            return self.to_api(live.record, live)
        run = await self.store.get(run_id)
        if run is None:
            raise TrainingNotFound(f"No training run with id {run_id!r}.", {"runId": run_id})
        tail = await asyncio.to_thread(read_log_tail, Path(run.work_dir) / "train.log")
        return self.to_api(run, None, tail)

    async def list(self, limit: int = 50) -> list[TrainingRun]:
        runs = await self.store.list(None, limit)
        return [self.to_api(self._live[r.id].record, self._live[r.id]) if r.id in self._live else self.to_api(r, None)
                for r in runs]

    async def cancel(self, run_id: str) -> TrainingRun:
        live = self._live.get(run_id)
        if live is None:
            run = await self.store.get(run_id)
            if run is None:
                raise TrainingNotFound(f"No training run with id {run_id!r}.", {"runId": run_id})
            raise InvalidState(f"Training run {run_id} is {run.status}; nothing to cancel.",
                               {"runId": run_id, "status": run.status})
        if live.record.status == "queued" and run_id in self._queue:
            self._queue.remove(run_id)
            self._live.pop(run_id, None)
            self.device.training.close(run_id)
            await self._finish(live, "cancelled")
            return self.to_api(live.record, None)
        live.cancel.set()  # the trainer stops its process group / loop; `_run` records the outcome
        log.info("training run %s: cancel requested", run_id)
        return self.to_api(live.record, live)

    async def resume(self, run_id: str) -> TrainingRun:
        async with self._submit_lock:
            run = await self.store.get(run_id)
            if run is None:
                raise TrainingNotFound(f"No training run with id {run_id!r}.", {"runId": run_id})
            if run.status not in RUN_RESUMABLE:
                raise InvalidState(
                    f"Training run {run_id} is {run.status}; only interrupted, cancelled or failed runs resume.",
                    {"runId": run_id, "status": run.status})
            self.device.training.refuse_if_training()
            if run.engine != "remote":
                admission.check_engine(self.settings, run.engine)
            spec = TrainSpec.from_dict(run.spec)
            point = await asyncio.to_thread(recovery.resume_point, run, spec)
            if point is not None and point[0] >= spec.steps:
                final = Path(run.output_dir) / f"{spec.output_name}.safetensors"
                if await asyncio.to_thread(safetensors_ok, final):
                    await self._set(run, "succeeded", final_file=str(final), step=spec.steps, error_code=None,
                                    error_message=None, error_details=None, finished_at=now_iso())
                    return self.to_api(run, None)
                raise InvalidState(f"Training run {run_id} already trained all {spec.steps} steps but has no final "
                                   "LoRA; promote its last checkpoint instead.", {"runId": run_id})
            warnings = list(run.warnings)
            if point is None:
                warnings.append(f"resume #{run.attempts}: no saved training state was found; training restarts "
                                "from step 0.")
            await self._set(run, "queued", resume_step=point[0] if point else None,
                            resume_state=str(point[1]) if point else None, error_code=None, error_message=None,
                            error_details=None, finished_at=None, warnings=warnings)
            self._enqueue(run)
        log.info("training run %s resumed from step %s", run_id, point[0] if point else 0)
        return self.to_api(run, self._live.get(run_id))

    async def _requeue(self, run: RunRecord, why: str) -> None:
        """Queue an interrupted run again at once, from its last saved state (as `resume` does)."""
        spec = TrainSpec.from_dict(run.spec)
        point = await asyncio.to_thread(recovery.resume_point, run, spec)
        await self._set(run, "queued", resume_step=point[0] if point else None,
                        resume_state=str(point[1]) if point else None, error_code=None, error_message=None,
                        error_details=None, finished_at=None)
        self._enqueue(run)
        log.info("training run %s queued again: %s", run.id, why)

    async def promote(self, run_id: str, req: PromoteRequest) -> Promoted:
        """Install a checkpoint of a finished run into the LoRA folder generation uses (never overwriting)."""
        run, target = await self._run_and_loras_dir(run_id, req.loras_dir)
        done = await asyncio.to_thread(install_checkpoint, run, req.step, target, req.name)
        log.info("training run %s: step %d %s as %s", run_id, done.step,
                 "already installed" if done.already else "installed", done.path)
        return Promoted(path=str(done.path), lora_id=done.lora_id, step=done.step, already_installed=done.already)

    async def stage(self, run_id: str, req: StageRequest) -> StagedLora:
        """Make a checkpoint loadable by jobs under a staged name, until `unstage` (a sweep's columns)."""
        run, target = await self._run_and_loras_dir(run_id, req.loras_dir)
        done = await asyncio.to_thread(staging.stage, run, req.step, target)
        log.info("training run %s: step %d staged as %s", run_id, done.step, done.lora_id)
        return StagedLora(path=str(done.path), lora_id=done.lora_id, step=done.step, already_staged=done.already)

    async def unstage(self, run_id: str, req: UnstageRequest) -> UnstagedLoras:
        run, target = await self._run_and_loras_dir(run_id, req.loras_dir)
        removed = await asyncio.to_thread(staging.unstage, run, req.step, target)
        log.info("training run %s: unstaged %s", run_id, ", ".join(removed) or "nothing")
        return UnstagedLoras(removed=removed)

    async def _run_and_loras_dir(self, run_id: str, loras_dir: str | None) -> tuple[RunRecord, Path]:
        run = await self.store.get(run_id)
        if run is None:
            raise TrainingNotFound(f"No training run with id {run_id!r}.", {"runId": run_id})
        return run, lora_dir(self.settings, Path(loras_dir).expanduser() if loras_dir else None)

    # -- queue
    def _enqueue(self, run: RunRecord) -> None:
        live = LiveRun(record=run, tracker=ProgressTracker(total=run.total or 0, step=run.resume_step or 0),
                       losses=LossRecorder(loss_file(run.output_dir)))
        self._live[run.id] = live
        self._queue.append(run.id)
        if run.engine != "remote":  # a run on another machine leaves this one free to generate
            self.device.training.open(run.id, lambda: self._summary(live))
        self._wakeup.set()

    def _summary(self, live: LiveRun) -> dict[str, Any]:
        eta = live.tracker.eta_seconds
        return {"id": live.record.id, "status": live.record.status, "step": live.tracker.step,
                "total": live.tracker.total, "etaSeconds": round(eta) if eta is not None else None}

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            run_id = self._queue[0]
            live = self._live.get(run_id)
            if live is None:
                self._queue.popleft()
                continue
            # Waits for a running generation job; queued jobs wait behind the training (design: one lock).
            # A remote run uses no device here: it neither waits for nor holds the lock.
            remote = live.record.engine == "remote"
            async with (contextlib.nullcontext() if remote else self.device.lock):
                if not self._queue or self._queue[0] != run_id:
                    continue  # cancelled while waiting for the lock
                self._queue.popleft()
                if not remote:
                    self.device.busy_with = f"training:{run_id}"
                self._running = live
                try:
                    if not remote:
                        # The generation backend's warm models and the trainer's cannot share 16 GB.
                        await self.backend.unload()
                    await self._run(live)
                except Exception:  # a bug must not kill the queue
                    log.exception("training run %s: unexpected error", run_id)
                    if live.record.status in RUN_ACTIVE:
                        await self._finish(live, "failed", code="internal_error",
                                           message="The daemon hit an internal error running this training; "
                                                   "see its log.")
                finally:
                    self._running = None
                    if not remote:
                        self.device.busy_with = None
                    self.device.training.close(run_id)
                    self._live.pop(run_id, None)

    async def _run(self, live: LiveRun) -> None:
        run = live.record
        spec = TrainSpec.from_dict(run.spec)
        resume = ResumePoint(run.resume_step or 0, Path(run.resume_state)) if run.resume_state else None
        start_step = resume.step if resume else 0
        live.tracker = ProgressTracker(total=spec.steps, step=start_step)
        await self._set(run, "running", started_at=now_iso(), attempts=run.attempts + 1, step=start_step,
                        total=spec.steps, pid=None)
        try:
            # A cancel is looked at per image while a set of thousands is checked again.
            dataset = await asyncio.to_thread(load_dataset, Path(spec.dataset_dir), spec.trigger_word,
                                              live.cancel.is_set, spec.repeats)
            job = TrainJob(run_id=run.id, spec=spec, dataset=dataset, work_dir=Path(run.work_dir),
                           output_dir=Path(run.output_dir), base_model=Path(run.base_model), resume=resume,
                           remote=run.remote)
            await asyncio.to_thread(job.output_dir.mkdir, parents=True, exist_ok=True)
            trainer = self.trainer_factory(spec.engine)
            result = await trainer.run(job, trainer_hooks(live, self.store, self._announce))
        except JobCancelled:
            await live.drain()
            if live.shutdown:
                await self._finish(live, "interrupted", code="interrupted",
                                   message=f"The daemon stopped during training at step {live.tracker.step}; "
                                           f"POST /loras/{run.id}/resume continues it.")
            else:
                await self._finish(live, "cancelled")
        except SidecarError as exc:
            await live.drain()
            await self._finish(live, "failed", code=exc.code, message=exc.message, details=exc.details)
        else:
            await live.drain()
            await self._finish(live, "succeeded", final_file=str(result.final_file), step=result.step)

    # -- state changes: persist first, then announce
    async def _set(self, run: RunRecord, status: str, **fields: Any) -> None:
        check_transition(run.id, run.status, status)
        await self.store.update(run.id, status=status, **fields)
        run.status = status
        for k, v in fields.items():
            setattr(run, k, v)
        log.info("training run %s -> %s", run.id, status)
        self._announce(run, "started" if status == "running" else status, self._live.get(run.id))

    async def _finish(self, live: LiveRun, status: str, *, code: str | None = None, message: str | None = None,
                      details: dict[str, Any] | None = None, **fields: Any) -> None:
        run = live.record
        if live.losses is not None:
            with contextlib.suppress(OSError):  # a curve that cannot be written must not lose the run's end
                await live.losses.flush()
        extra: dict[str, Any] = {"finished_at": now_iso(), "step": live.tracker.step, "pid": None,
                                 "loss": finite(live.tracker.loss_last),
                                 "loss_smoothed": finite(live.tracker.loss_smoothed), **fields}
        if code:
            extra.update(error_code=code, error_message=message, error_details=details or {})
            log.warning("training run %s %s: %s: %s", run.id, status, code, message)
        if status == "succeeded":
            extra["step"] = fields.get("step", run.total)
        await self._set(run, status, **extra)

    # -- views
    def _announce(self, run: RunRecord, kind: str, live: LiveRun | None = None) -> None:
        self.events.publish(TrainingEvent(type=f"training.{kind}", run=self.to_api(run, live)))

    def to_api(self, run: RunRecord, live: LiveRun | None, tail: list[str] | None = None) -> TrainingRun:
        if live is not None:
            return run_view(run, live.tracker, list(live.tail))
        return run_view(run, None, tail or [])

