"""The generation queue: FIFO, one job at a time under the device lock, driving whichever backend.

Owns job state changes (persisted before they are announced), cancellation, the one re-queue of a
job whose prompt the backend lost, and picking up queued and running jobs after a daemon restart.
It does not know how a backend runs a job (see `sidecar.backend`).

Faults never stop the queue: any exception from the backend or the store fails that job (a full disk
as `disk_full`, anything unforeseen as `internal_error`) and the next one runs; an end state the store
cannot write (the disk is full) is kept in memory and written once the store takes writes again; and
should the worker task die anyway, it is restarted after `restart_delay` (while it is down,
`worker_error` says why and `/health` is degraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend, RunContext
from sidecar.backends.admission import Needs
from sidecar.backends.lane import run_on
from sidecar.backends.member import Member
from sidecar.backends.pool import BackendPool
from sidecar.backends.router import Pick, Queued, admit, plan
from sidecar.device import Device
from sidecar.errors import (
    GroupNotFound, InvalidField, InvalidState, JobCancelled, JobNotFound, PromptLost, QueueFull, SidecarError,
)
from sidecar.events import EventBus
from sidecar.jobs.faults import disk_full, log_write_failure, sweep_temp_files
from sidecar.jobs.params import JobSpec
from sidecar.jobs.previews import Previews
from sidecar.jobs.queue import JobQueue, Place
from sidecar.jobs.states import TERMINAL, check_transition
from sidecar.jobs.stranded import hand_over_later
from sidecar.jobs.store import UPSCALED_SUFFIX, IdempotencyClaim, JobRecord, JobStore
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.jobs")


@dataclass(frozen=True)
class JobChanged:
    """Published on the event bus: `type` is job.queued|started|progress|succeeded|failed|cancelled. The
    bus's encoder (the API layer) turns it into the wire `JobEvent` at once, so later changes to the
    live record do not leak into an event already sent."""

    type: str
    job: JobRecord


MAX_LOSSES = 1  # a lost prompt is re-queued once, then the job fails
PROGRESS_PERSIST_INTERVAL = 1.0
LANE_POLL = 1.0  # a pool lane looks at the queue again at least this often (a training ended, estimates moved)


class JobRunner:
    def __init__(self, store: JobStore, backend: GenerationBackend, device: Device, events: EventBus,
                 outputs_dir: Path, *, max_queue: int = 512, restart_delay: float = 1.0,
                 pool: BackendPool | None = None, default_where: str = "local", previews: Previews | None = None,
                 recovery_timeout: float = 300.0):
        self.store = store
        self.previews = previews or Previews(events, enabled=False)
        self.backend = backend
        # Several backends (sidecar/backends/): one lane per backend, each taking the jobs routed to it.
        self.pool = pool
        self.default_where = default_where
        # A job recovered onto a backend that stays away is handed over after this long (jobs.stranded).
        self.recovery_timeout = recovery_timeout
        self._handovers: set[asyncio.Task[None]] = set()
        self._needs: dict[str, Needs] = {}
        self.device = device
        self.events = events
        self.outputs_dir = outputs_dir
        # Which queued job runs next, and the pause (sidecar.jobs.queue); ids of jobs in `_live`.
        self.queue = JobQueue()
        self._wakeup = asyncio.Event()
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._live: dict[str, JobRecord] = {}  # queued + running jobs, the source of truth while live
        self._running: str | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Jobs picked up after a restart, until they end: a loss after a re-queue is still `lost_on_restart`.
        self._recovering: set[str] = set()
        self.max_queue = max_queue
        self._submitting = 0  # submits between the depth check and the queue (the store write)
        # Ended jobs whose end state the store could not write yet (disk full): answered from here.
        self._unsaved: dict[str, JobRecord] = {}
        self.restart_delay = restart_delay
        self.worker_restarts = 0
        self.worker_error: str | None = None  # why the worker is down, until it is restarted
        self._stopping = False
        self._restart: asyncio.TimerHandle | None = None

    # -- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        for tmp in await asyncio.to_thread(sweep_temp_files, self.outputs_dir):
            log.info("removed %s, left by a daemon stopped while writing it", tmp.name)
        await self._recover()
        if self.pool is not None:
            self.pool.on_change = self._wake
        self._start_worker(restarted=False)

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        for task in list(self._handovers):
            task.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - whatever ended it, it is stopped now
                pass
            self._task = None
        await self._flush_unsaved()

    @property
    def worker_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start_worker(self, *, restarted: bool) -> None:
        self._task = asyncio.create_task(self._worker(restarted), name="job-runner")
        self._task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        self.worker_error = f"{type(exc).__name__}: {exc}" if exc else "the job worker returned"
        log.error("the job worker stopped (%s); restarting it in %.1f s", self.worker_error, self.restart_delay,
                  exc_info=exc)
        self._restart = asyncio.get_running_loop().call_later(self.restart_delay, self._restart_worker)

    def _restart_worker(self) -> None:
        self._restart = None
        if self._stopping:
            return
        self.worker_restarts += 1
        self.worker_error = None
        log.info("job worker restarted (restart %d)", self.worker_restarts)
        self._start_worker(restarted=True)

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
                if job.status == "running":
                    self.queue.requeue_head(job.id)
                    if self.pool is not None and job.backend in self.pool.by_name:
                        task = asyncio.create_task(hand_over_later(self, job, self.recovery_timeout),
                                                   name=f"hand-over-{job.id}")
                        self._handovers.add(task)
                        task.add_done_callback(self._handovers.discard)
                else:
                    self.queue.add(job.id, Place.of(job.seq or 0, job.front_rank))
            else:
                self._live[job.id] = job
                self.queue.add(job.id, Place.of(job.seq or 0, job.front_rank))
        state = await self.store.queue_state()
        if state.get("paused_at"):
            self.queue.pause(str(state["paused_at"]))
            log.info("the queue is paused (since %s): queued jobs wait for POST /queue/resume", state["paused_at"])
        if self.queue:
            log.info("recovered %d unfinished job(s) from the store", len(self.queue))
            self._wakeup.set()

    # -- public API
    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def running_job(self) -> str | None:
        return self._running

    async def submit(self, built: JobSpec, claim: IdempotencyClaim | None = None, *, front: bool = False,
                     retry_of: str | None = None, group_id: str | None = None) -> JobRecord:
        return (await self.submit_many([built], claim, front=front, retry_of=retry_of, group_id=group_id))[0]

    async def submit_many(self, specs: list[JobSpec], claim: IdempotencyClaim | None = None, *,
                          front: bool = False, group_id: str | None = None,
                          retry_of: str | None = None) -> list[JobRecord]:
        """Queue jobs, all or none (one transaction, and the whole lot within `max_queue`). `front`: at
        the head of the queue, in their order; `group_id`: one submission of variations."""
        waiting = len(self.queue) + self._submitting
        if waiting + len(specs) > self.max_queue:
            if len(specs) == 1:
                raise QueueFull(f"{waiting} jobs are already waiting, the most this daemon queues (max_queue "
                                f"{self.max_queue}); submit again once some have run.",
                                {"limit": self.max_queue, "queueDepth": waiting})
            raise QueueFull(f"{waiting} jobs are already waiting and this submit adds {len(specs)}: more than "
                            f"this daemon queues (max_queue {self.max_queue}); nothing was queued. Submit again "
                            "once some have run, or with fewer variations.",
                            {"limit": self.max_queue, "queueDepth": waiting, "adding": len(specs)})
        wheres = [built.where or self.default_where for built in specs]
        for where, built in zip(wheres, specs):
            self._admit(where, built.workflow)
        rank = self.queue.next_front_rank() if front else None
        jobs = [JobRecord(
            id=uuid.uuid4().hex,
            status="queued",
            params=built.params,
            template=built.template,
            workflow=built.workflow,
            engine=self.backend.name,
            pose_image=str(built.pose_image) if built.pose_image else None,
            where_=where,
            group_id=group_id,
            retry_of=retry_of,
            front_rank=rank,
        ) for where, built in zip(wheres, specs)]
        self._submitting += len(jobs)
        try:
            await self.store.insert_many(jobs, claim)  # a full disk raises DiskFull here: 507, nothing queued
        finally:
            self._submitting -= len(jobs)
        for job in jobs:
            self._live[job.id] = job
            self.queue.add(job.id, Place.of(job.seq or 0, rank))
            log.info("job %s queued (template %s, where %s, queue depth %d%s)", job.id, job.template, job.where_,
                     len(self.queue), ", at the front" if front else "")
            self._announce(job)
        self._wake()
        return jobs

    def _admit(self, where: str, workflow: dict[str, Any]) -> None:
        """Refuse now what no backend `where` allows admits (400, each backend's reason), and, while a
        training holds this machine's device, what only this machine's backends admit (409)."""
        if self.pool is None:
            if where not in ("local", "any"):
                raise InvalidField(f"where: {where!r} names no backend; this daemon has one (`local`): configure "
                                   "[[backends]] tables to route jobs elsewhere.",
                                   {"field": "where", "value": where, "allowed": ["local", "any"]})
            self.device.training.refuse_if_training()
            return
        verdicts = admit(where, Needs.of(workflow), self.pool.members, self.pool.local_models)
        admitting = {v.backend for v in verdicts if v.admitted}
        if all(self.pool.by_name[name].local for name in admitting):
            self.device.training.refuse_if_training()

    def _wake(self) -> None:
        self._wakeup.set()
        if self.pool is not None:
            for m in self.pool.members:
                m.wakeup.set()

    async def get(self, job_id: str) -> JobRecord:
        job = self._live.get(job_id) or self._unsaved.get(job_id) or await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r}.", {"jobId": job_id})
        return job

    async def list(self, status: str | None, limit: int, group: str | None = None) -> list[JobRecord]:
        jobs = await self.store.list(status, limit, group)
        # Live records carry progress newer than the last persisted one.
        return [self._live.get(j.id) or self._unsaved.get(j.id) or j for j in jobs]

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status in TERMINAL:
            raise InvalidState(f"Job {job_id} already {job.status}; nothing to cancel.",
                               {"jobId": job_id, "status": job.status})
        if job.status == "queued" and self.queue.remove(job_id):
            await self._finish_or_keep(job, "cancelled")
            return job
        # Running: the backend stops it (ComfyUI interrupt / engine step check) and we mark it cancelled
        # only once the backend confirms.
        event = self._cancel_events.get(job_id)
        if event is not None:
            event.set()
        log.info("job %s cancel requested while running", job_id)
        return job

    async def group(self, group_id: str) -> list[JobRecord]:
        jobs = [self._live.get(j.id) or self._unsaved.get(j.id) or j for j in await self.store.group(group_id)]
        if not jobs:
            raise GroupNotFound(f"No group with id {group_id!r}.", {"groupId": group_id})
        return jobs

    async def cancel_group(self, group_id: str) -> list[JobRecord]:
        """Every unfinished job of a group: the queued ones leave the queue at once (so none can start
        while the others are being cancelled), then the running one is interrupted."""
        jobs = await self.group(group_id)
        for job_id in self.queue.remove_all([j.id for j in jobs if j.status == "queued"]):
            await self._finish_or_keep(self._live[job_id], "cancelled")
        for job in jobs:
            if job.status == "running" and (event := self._cancel_events.get(job.id)) is not None:
                event.set()
                log.info("job %s cancel requested while running (group %s)", job.id, group_id)
        return jobs

    # -- pause (persisted first, then applied: a restart finds the queue as the user left it)
    async def pause(self) -> None:
        if self.queue.paused:
            return
        at = now_iso()
        await self.store.set_queue_state(paused_at=at)
        self.queue.pause(at)
        log.info("queue paused: the running job (if any) finishes, nothing new starts")
        self.events.publish(self.queue.changed("queue.paused", self._running))

    async def resume(self) -> None:
        if not self.queue.paused:
            return
        await self.store.set_queue_state(paused_at=None)
        self.queue.resume()
        log.info("queue resumed (%d waiting)", len(self.queue))
        self.events.publish(self.queue.changed("queue.resumed", self._running))
        self._wake()

    # -- worker
    async def _worker(self, restarted: bool) -> None:
        if restarted:
            await self._fail_abandoned()
        if self.pool is not None:
            async with asyncio.TaskGroup() as lanes:
                for member in self.pool.members:
                    lanes.create_task(self._lane(member), name=f"job-lane-{member.name}")
            return
        while True:
            while self.queue.next_job() is None:  # none waits, or the queue is paused
                self._wakeup.clear()
                await self._wakeup.wait()
            async with self.device.lock:
                await self._flush_unsaved()
                job_id = self.queue.take()
                if job_id is None:
                    continue
                job = self._live.get(job_id)
                if job is None or job.status in TERMINAL:
                    continue
                self.device.busy_with = f"job:{job_id}"
                self._running = job_id
                try:
                    await self._run_one(job)
                finally:
                    self._running = None
                    self.device.busy_with = None

    async def _lane(self, m: Member) -> None:
        """One backend of the pool: whenever it is free, take the first job the router plans onto it."""
        while True:
            m.wakeup.clear()
            picked = None
            if m.available and self.queue.runnable():
                async with m.lock:  # a local backend's lock is the device lock (training waits, or holds it)
                    m.holding = True
                    try:
                        await self._flush_unsaved()
                        picked = await self._pick(m)
                        if picked is not None:
                            await self._run_on_lane(m, *picked)
                    finally:
                        m.holding = False
                if picked is not None:
                    self._wake()  # the plan changed for every lane
                    continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop the cancel that stops the lane.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LANE_POLL):
                    await m.wakeup.wait()

    async def _run_on_lane(self, m: Member, job: JobRecord, pick: Pick) -> None:
        if m.local:
            self.device.busy_with = f"job:{job.id}"
        self._running = job.id
        try:
            await self._run_one(job, m, pick)
        finally:
            if self._running == job.id:
                self._running = None
            if m.local:
                self.device.busy_with = None

    async def _pick(self, m: Member) -> tuple[JobRecord, Pick] | None:
        assert self.pool is not None
        items = []
        for job_id in self.queue.runnable():  # in order; while paused only those already running
            job = self._live.get(job_id)
            if job is None or job.status in TERMINAL:
                continue
            # A job that was running when the daemon stopped is reconciled where its prompt is.
            pinned = job.backend if job.status == "running" and job.prompt_id else None
            items.append(Queued(job_id, job.where_ or self.default_where, self._needs_of(job), pinned))
        p = plan(items, self.pool.members, self.pool.local_models)
        for job_id, reasons in p.stuck.items():
            job = self._live[job_id]
            self.queue.remove(job_id)
            listed = "; ".join(f"{k}: {v}" for k, v in reasons.items())
            await self._finish_or_keep(job, "failed", code="no_backend_admits",
                                       message=f"No backend admits this job any more: {listed}.",
                                       details={"where": job.where_, "backends": reasons})
        pick = p.picks.get(m.name)
        if pick is None or pick.job_id not in self.queue:
            return None
        self.queue.remove(pick.job_id)
        job = self._live.get(pick.job_id)
        if job is None or job.status in TERMINAL:
            return None
        return job, pick

    def planned(self) -> dict[str, int]:
        """Queued jobs the router would put on each backend now (/health)."""
        if self.pool is None:
            return {}
        items = [Queued(j, job.where_ or self.default_where, self._needs_of(job))
                 for j in self.queue if (job := self._live.get(j)) is not None and job.status not in TERMINAL]
        return plan(items, self.pool.members, self.pool.local_models).queued

    def _needs_of(self, job: JobRecord) -> Needs:
        needs = self._needs.get(job.id)
        if needs is None:
            needs = self._needs[job.id] = Needs.of(job.workflow)
        return needs

    async def _run_one(self, job: JobRecord, member: Member | None = None, pick: Pick | None = None) -> None:
        """Run a job; whatever goes wrong, it ends (failed with a code) and the worker goes on."""
        try:
            await self._run(job, member, pick)
        except Exception as exc:  # a bug or a store fault must not kill the queue
            failure = exc if isinstance(exc, SidecarError) else None
            if isinstance(exc, OSError):
                failure = disk_full(exc, "the job's data")
            if failure is None:
                log.exception("job %s: unexpected error", job.id)
                failure = SidecarError("The daemon hit an internal error running this job; see its log.")
            else:
                log.warning("job %s: %s", job.id, failure.message)
            if job.status not in TERMINAL:
                await self._finish_or_keep(job, "failed", code=failure.code, message=failure.message,
                                           details=failure.details)

    async def _fail_abandoned(self) -> None:
        """A job the dead worker was running (not queued again) can be in any state in the backend: fail it."""
        for job in list(self._live.values()):
            if job.status == "running" and job.id not in self.queue:
                await self._finish_or_keep(job, "failed", code="internal_error",
                                           message="The job worker stopped while running this job; see the "
                                                   "daemon log. Submit it again.")

    async def _run(self, job: JobRecord, member: Member | None = None, pick: Pick | None = None) -> None:
        reconcile = job.status == "running"
        running_write: asyncio.Future[Any] | None = None
        if not reconcile:
            routed = ({"backend": member.name, "backend_reason": pick.reason} if member is not None and pick
                      else {"backend": "local", "backend_reason": "the daemon's only backend"})
            if member is not None:
                log.info("job %s -> backend %s: %s", job.id, member.name, routed["backend_reason"])
            # Not awaited before the backend starts: the store writes in call order, so the prompt id
            # (awaited before anything reaches ComfyUI) is never on disk without this state before it.
            running_write = self._set_soon(job, "running", started_at=now_iso(), progress_step=0, **routed)
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
            self.events.publish(JobChanged("job.progress", job))
            now = time.monotonic()
            if now - last_persist >= PROGRESS_PERSIST_INTERVAL or step == total:
                last_persist = now
                written = self.store.update_soon(job.id, progress_step=step, progress_total=total)
                written.add_done_callback(log_write_failure)

        async def on_prompt_id(prompt_id: str) -> None:
            # On disk before the live record shows it: a job whose prompt id a client saw is reconciled by
            # that id after a restart (the restart tests stop the daemon as soon as they see it).
            await self.store.update(job.id, prompt_id=prompt_id)
            job.prompt_id = prompt_id

        async def on_workflow(workflow: dict[str, Any]) -> None:
            job.workflow = workflow
            await self.store.update(job.id, workflow=workflow)

        def on_queued(ahead: int | None) -> None:
            if ahead != job.queued_behind:
                job.queued_behind = ahead
                self.events.publish(JobChanged("job.progress", job))

        preview_due, on_preview = self.previews.callbacks(job.id, self._loop, self._loop_thread)
        ctx = RunContext(
            job_id=job.id,
            workflow=job.workflow,
            output_path=self.outputs_dir / f"{job.id}.png",
            upscaled_path=self.outputs_dir / f"{job.id}{UPSCALED_SUFFIX}",
            on_progress=on_progress,
            on_prompt_id=on_prompt_id,
            cancel_event=cancel,
            prompt_id=job.prompt_id,
            pose_image=Path(job.pose_image) if job.pose_image else None,
            on_workflow=on_workflow,
            on_queued=on_queued,
            preview_due=preview_due,
            on_preview=on_preview,
        )
        try:
            if member is not None and self.pool is not None:
                copies = pick.verdict.copies if pick is not None else ()
                result = await run_on(self.pool, member, ctx, self._needs_of(job), copies)
            else:
                result = await self.backend.run(ctx)
        except JobCancelled as exc:
            if str(exc):  # e.g. interrupted in ComfyUI's own UI, not through our API
                log.info("job %s cancelled: %s", job.id, exc)
            await self._finish(job, "cancelled")
        except PromptLost as exc:
            await self._lost(job, exc)
        except SidecarError as exc:
            await self._finish(job, "failed", code=exc.code, message=exc.message, details=exc.details)
        except OSError as exc:
            full = disk_full(exc, "the job's image")
            if full is None:
                raise
            await self._finish(job, "failed", code=full.code, message=full.message, details=full.details)
        else:
            job.device = result.device
            await self._finish(job, "succeeded", output_file=str(result.output_path), device=result.device,
                               upscaled_file=str(result.upscaled_path) if result.upscaled_path else None)
        finally:
            job.queued_behind = None
            self._cancel_events.pop(job.id, None)
            if running_write is not None and not running_write.done():
                await asyncio.wait([running_write])  # written before the end state, in store order
            if running_write is not None and running_write.exception() is not None:
                # The end state written after it is what counts; a full disk failed the job already.
                log.warning("job %s: its `running` state was not written: %s", job.id, running_write.exception())

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
        self.queue.requeue_head(job.id)
        self._wake()

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
        await self._set(job, status, **self._end_fields(job, status, code, message, details, fields))
        if code:
            log.info("job %s failed: %s: %s", job.id, code, message)
        self._live.pop(job.id, None)
        self._recovering.discard(job.id)
        self._needs.pop(job.id, None)

    @staticmethod
    def _end_fields(job: JobRecord, status: str, code: str | None, message: str | None,
                    details: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {"finished_at": now_iso(), **fields}
        if code:
            extra.update(error_code=code, error_message=message, error_details=details or {})
        if status == "succeeded" and job.progress_total:
            extra["progress_step"] = job.progress_total
        return extra

    async def _finish_or_keep(self, job: JobRecord, status: str, *, code: str | None = None,
                              message: str | None = None, details: dict[str, Any] | None = None) -> None:
        """End a job; if the store cannot take the write, the end state lives in memory (answered by
        get/list, announced) and is written before the next job runs or at shutdown."""
        try:
            await self._finish(job, status, code=code, message=message, details=details)
        except Exception as exc:  # noqa: BLE001 - the store is what failed; the job still ends
            log.error("job %s: cannot write its end state (%s); kept in memory until the store takes writes",
                      job.id, exc)
            self._apply(job, status, self._end_fields(job, status, code, message, details, {}))
            self._unsaved[job.id] = job
            self._live.pop(job.id, None)
            self._recovering.discard(job.id)

    async def _flush_unsaved(self) -> None:
        for job in list(self._unsaved.values()):
            try:
                await self.store.update(job.id, status=job.status, finished_at=job.finished_at,
                                        error_code=job.error_code, error_message=job.error_message,
                                        error_details=job.error_details, progress_step=job.progress_step)
            except Exception as exc:  # noqa: BLE001 - still cannot write: keep it for the next try
                log.debug("job %s: end state still not written (%s)", job.id, exc)
                return
            del self._unsaved[job.id]
            log.info("job %s: end state written (%s)", job.id, job.status)

    def _announce(self, job: JobRecord) -> None:
        kind = "started" if job.status == "running" else job.status
        self.events.publish(JobChanged(f"job.{kind}", job))
