"""The generation queue: FIFO, one job at a time under the device lock, driving whichever backend.

Owns job state changes (persisted before they are announced), cancellation, the one re-queue of a
job whose prompt the backend lost, and picking up queued and running jobs after a daemon restart.
It does not know how a backend runs a job (see `sidecar.backend`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend, RunContext
from sidecar.errors import InvalidState, JobCancelled, JobNotFound, PromptLost, SidecarError
from sidecar.events import EventBus
from sidecar.jobs.build import BuiltJob
from sidecar.jobs.device import Device
from sidecar.jobs.states import TERMINAL, check_transition
from sidecar.jobs.store import JobRecord, JobStore
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.jobs")

MAX_LOSSES = 1  # a lost prompt is re-queued once, then the job fails
PROGRESS_PERSIST_INTERVAL = 1.0


class JobRunner:
    def __init__(self, store: JobStore, backend: GenerationBackend, device: Device, events: EventBus,
                 outputs_dir: Path):
        self.store = store
        self.backend = backend
        self.device = device
        self.events = events
        self.outputs_dir = outputs_dir
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._live: dict[str, JobRecord] = {}  # queued + running jobs, the source of truth while live
        self._running: str | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Jobs picked up after a restart, until they end: a loss after a re-queue is still `lost_on_restart`.
        self._recovering: set[str] = set()

    # -- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        await self._recover()
        self._task = asyncio.create_task(self._worker(), name="job-runner")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _recover(self) -> None:
        """Queued jobs run again; a job that was running is reconciled with the backend (by its prompt
        id) or re-queued once; nothing is silently dropped or run twice."""
        for job in await self.store.unfinished():
            if job.status == "running":
                self._recovering.add(job.id)
                if job.prompt_id is None:
                    # The backend never accepted it (or has no ids, as the embedded engine): run it again,
                    # which counts as the one re-queue.
                    if job.attempts >= MAX_LOSSES:
                        await self._finish(job, "failed", code="lost_on_restart",
                                           message="The job was running when the daemon stopped and had "
                                                   "already been re-queued once.")
                        continue
                    job.attempts += 1
                    await self._set(job, "queued", attempts=job.attempts, progress_step=0)
                    log.info("job %s was running at shutdown: re-queued (attempt %d)", job.id, job.attempts + 1)
                self._live[job.id] = job
                self._queue.appendleft(job.id) if job.status == "running" else self._queue.append(job.id)
            else:
                self._live[job.id] = job
                self._queue.append(job.id)
        if self._queue:
            log.info("recovered %d unfinished job(s) from the store", len(self._queue))
            self._wakeup.set()

    # -- public API
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_job(self) -> str | None:
        return self._running

    async def submit(self, built: BuiltJob, request: dict[str, Any]) -> JobRecord:
        job = JobRecord(
            id=uuid.uuid4().hex,
            status="queued",
            request=request,
            params=built.params,
            template=built.template,
            workflow=built.workflow,
            engine=self.backend.name,
            pose_image=str(built.pose_image) if built.pose_image else None,
        )
        await self.store.insert(job)
        self._live[job.id] = job
        self._queue.append(job.id)
        log.info("job %s queued (template %s, queue depth %d)", job.id, job.template, len(self._queue))
        self._announce(job)
        self._wakeup.set()
        return job

    async def get(self, job_id: str) -> JobRecord:
        job = self._live.get(job_id) or await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r}.", {"jobId": job_id})
        return job

    async def list(self, status: str | None, limit: int) -> list[JobRecord]:
        jobs = await self.store.list(status, limit)
        # Live records carry progress newer than the last persisted one.
        return [self._live.get(j.id, j) for j in jobs]

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status in TERMINAL:
            raise InvalidState(f"Job {job_id} already {job.status}; nothing to cancel.",
                               {"jobId": job_id, "status": job.status})
        if job.status == "queued" and job_id in self._queue:
            self._queue.remove(job_id)
            await self._finish(job, "cancelled")
            return job
        # Running: the backend stops it (ComfyUI interrupt / engine step check) and we mark it cancelled
        # only once the backend confirms.
        event = self._cancel_events.get(job_id)
        if event is not None:
            event.set()
        log.info("job %s cancel requested while running", job_id)
        return job

    # -- worker
    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            async with self.device.lock:
                if not self._queue:
                    continue
                job_id = self._queue.popleft()
                job = self._live.get(job_id)
                if job is None or job.status in TERMINAL:
                    continue
                self.device.busy_with = f"job:{job_id}"
                self._running = job_id
                try:
                    await self._run(job)
                except Exception:  # a bug must not kill the queue
                    log.exception("job %s: unexpected error", job_id)
                    if job.status not in TERMINAL:
                        await self._finish(job, "failed", code="internal_error",
                                           message="The daemon hit an internal error running this job; see its log.")
                finally:
                    self._running = None
                    self.device.busy_with = None

    async def _run(self, job: JobRecord) -> None:
        reconcile = job.status == "running"
        running_write: asyncio.Future[Any] | None = None
        if not reconcile:
            # Not awaited before the backend starts: the store writes in call order, so the prompt id
            # (awaited before anything reaches ComfyUI) is never on disk without this state before it.
            running_write = self._set_soon(job, "running", started_at=now_iso(), progress_step=0)
        cancel = asyncio.Event()
        self._cancel_events[job.id] = cancel
        # Persisted progress only matters after a restart: every PROGRESS_PERSIST_INTERVAL and at the
        # last step, not at the first (the live record answers GET /jobs/{id} meanwhile).
        last_persist = time.monotonic()

        def on_progress(step: int, total: int) -> None:
            # Backends may call this from a worker thread (the embedded engine runs torch there).
            if self._loop is not None and threading.get_ident() != self._loop_thread:
                self._loop.call_soon_threadsafe(apply, step, total)
            else:
                apply(step, total)

        def apply(step: int, total: int) -> None:
            nonlocal last_persist
            job.progress_step, job.progress_total = step, total
            self.events.publish({"type": "job.progress", "job": job.to_api()})
            now = time.monotonic()
            if now - last_persist >= PROGRESS_PERSIST_INTERVAL or step == total:
                last_persist = now
                self.store.update_soon(job.id, progress_step=step, progress_total=total)

        async def on_prompt_id(prompt_id: str) -> None:
            job.prompt_id = prompt_id
            await self.store.update(job.id, prompt_id=prompt_id)

        ctx = RunContext(
            job_id=job.id,
            workflow=job.workflow,
            output_path=self.outputs_dir / f"{job.id}.png",
            on_progress=on_progress,
            on_prompt_id=on_prompt_id,
            cancel_event=cancel,
            prompt_id=job.prompt_id,
            pose_image=Path(job.pose_image) if job.pose_image else None,
        )
        try:
            result = await self.backend.run(ctx)
        except JobCancelled as exc:
            if str(exc):  # e.g. interrupted in ComfyUI's own UI, not through our API
                log.info("job %s cancelled: %s", job.id, exc)
            await self._finish(job, "cancelled")
        except PromptLost as exc:
            await self._lost(job, exc)
        except SidecarError as exc:
            await self._finish(job, "failed", code=exc.code, message=exc.message, details=exc.details)
        else:
            job.device = result.device
            await self._finish(job, "succeeded", output_file=str(result.output_path), device=result.device)
        finally:
            self._cancel_events.pop(job.id, None)
            if running_write is not None:
                await running_write  # long done (written before the end state); surfaces a disk error

    async def _lost(self, job: JobRecord, exc: PromptLost) -> None:
        after_restart = job.id in self._recovering
        if job.attempts >= MAX_LOSSES:
            code = "lost_on_restart" if after_restart else "prompt_lost"
            await self._finish(job, "failed", code=code,
                               message=f"{exc.message} The job had already been re-queued once.",
                               details=exc.details)
            return
        job.attempts += 1
        job.prompt_id = None
        await self._set(job, "queued", attempts=job.attempts, prompt_id=None, progress_step=0)
        log.warning("job %s lost by the backend (%s): re-queued once", job.id, exc.message)
        self._queue.appendleft(job.id)
        self._wakeup.set()

    # -- state changes: persist first, then announce
    async def _set(self, job: JobRecord, status: str, **fields: Any) -> None:
        check_transition(job.id, job.status, status)
        await self.store.update(job.id, status=status, **fields)
        self._apply(job, status, fields)

    def _set_soon(self, job: JobRecord, status: str, **fields: Any) -> asyncio.Future[Any]:
        """For `running` only (the live record answers for a running job): the write is handed to the
        store in call order and the change announced at once; the future says when it is on disk."""
        check_transition(job.id, job.status, status)
        written = self.store.update_soon(job.id, status=status, **fields)
        self._apply(job, status, fields)
        return written

    def _apply(self, job: JobRecord, status: str, fields: dict[str, Any]) -> None:
        job.status = status
        for k, v in fields.items():
            setattr(job, k, v)
        log.info("job %s -> %s", job.id, status)
        self._announce(job)

    async def _finish(self, job: JobRecord, status: str, *, code: str | None = None, message: str | None = None,
                      details: dict[str, Any] | None = None, **fields: Any) -> None:
        extra: dict[str, Any] = {"finished_at": now_iso(), **fields}
        if code:
            extra.update(error_code=code, error_message=message, error_details=details or {})
        if status == "succeeded" and job.progress_total:
            extra["progress_step"] = job.progress_total
        await self._set(job, status, **extra)
        if code:
            log.info("job %s failed: %s: %s", job.id, code, message)
        self._live.pop(job.id, None)
        self._recovering.discard(job.id)

    def _announce(self, job: JobRecord) -> None:
        kind = "started" if job.status == "running" else job.status
        self.events.publish({"type": f"job.{kind}", "job": job.to_api()})
