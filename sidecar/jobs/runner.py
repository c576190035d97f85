"""The generation queue: FIFO, one job at a time under the device lock, driving whichever backend.

Owns job state changes (persisted before they are announced), cancellation, the one re-queue of a
job whose prompt the backend lost, and picking up queued and running jobs after a daemon restart.
It does not know how a backend runs a job (see `sidecar.backend`).

The parts, each in its own module: `ledger` (state changes, persisted then announced, and end states
kept while the disk is full), `recovery` (what a restart picks up), `stranded` (jobs whose backend does
not come back), `lanes` (the worker and its lanes), `execute` (running one job). This module wires them
and answers the API: submit, get, list, cancel, groups, pause.

Faults never stop the queue: any exception from the backend or the store fails that job (a full disk
as `disk_full`, anything unforeseen as `internal_error`) and the next one runs; an end state the store
cannot write (the disk is full) is kept in memory and written once the store takes writes again; and
should the worker task die anyway, it is restarted after `restart_delay` (while it is down,
`worker_error` says why and `/health` is degraded).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend
from sidecar.backends.admission import Needs
from sidecar.backends.on_demand import OnDemand
from sidecar.backends.pool import BackendPool
from sidecar.backends.router import admit
from sidecar.device import Device
from sidecar.config.backends import BackendSpec
from sidecar.errors import (FamilyNotSupported, GroupNotFound, InvalidField, InvalidState, JobNotFound, NoBackendAdmits,
                            QueueFull, SidecarError)
from sidecar.events import EventBus
from sidecar.jobs.execute import Executor
from sidecar.jobs.faults import sweep_temp_files
from sidecar.jobs.lanes import Worker
from sidecar.jobs.ledger import Ledger
from sidecar.jobs.pageref import PageRef
from sidecar.jobs.pages import Judge
from sidecar.jobs.params import JobSpec
from sidecar.jobs.previews import Previews
from sidecar.jobs.queue import JobQueue, Place
from sidecar.jobs.recovery import recover
from sidecar.jobs.states import TERMINAL
from sidecar.jobs.store import IdempotencyClaim, JobRecord, JobStore
from sidecar.jobs.stranded import Stranded
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.jobs")

DEFAULT_SOURCE = "api"  # a job's `source` when the submit does not say who it is


class JobRunner:
    def __init__(self, store: JobStore, backend: GenerationBackend, device: Device, events: EventBus,
                 outputs_dir: Path, *, max_queue: int = 512, restart_delay: float = 1.0,
                 pool: BackendPool | None = None, default_where: str = "local", previews: Previews | None = None,
                 recovery_timeout: float = 300.0, judge: Judge | None = None):
        self.store = store
        self.previews = previews or Previews(events, enabled=False)
        self.backend = backend
        # Several backends (sidecar/backends/): one lane per backend, each taking the jobs routed to it.
        self.pool = pool
        self.default_where = default_where
        self.device = device
        self.events = events
        self.outputs_dir = outputs_dir
        # Which queued job runs next, and the pause (sidecar.jobs.queue); ids of jobs in the ledger's `live`.
        self.queue = JobQueue()
        self.ledger = Ledger(store, events)
        self.executor = Executor(self.ledger, self.queue, backend, outputs_dir, self.previews, pool=pool,
                                 wake=self._wake, judge=judge)
        self.worker = Worker(self.ledger, self.queue, self.executor, device, pool=pool, default_where=default_where)
        # A job recovered onto a backend that stays away is handed over after this long (jobs.stranded).
        self.stranded = (Stranded(self.ledger, self.queue, pool, default_where=default_where,
                                  timeout=recovery_timeout, wake=self._wake) if pool is not None else None)
        self.on_demand: OnDemand | None = None  # on-demand rented tables (the app sets it, with the renter)
        self.worker.held = lambda job_id: self.on_demand is not None and self.on_demand.holds(job_id)
        self.max_queue = max_queue
        self._submitting = 0  # submits between the depth check and the queue (the store write)
        self._task: asyncio.Task | None = None
        self.restart_delay = restart_delay
        self.worker_restarts = 0
        self.worker_error: str | None = None  # why the worker is down, until it is restarted
        self._stopping = False
        self._restart: asyncio.TimerHandle | None = None

    # -- lifecycle
    async def start(self) -> None:
        self.executor.bind_loop()
        self._stopping = False
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        for tmp in await asyncio.to_thread(sweep_temp_files, self.outputs_dir):
            log.info("removed %s, left by a daemon stopped while writing it", tmp.name)
        for job in await recover(self.ledger, self.queue):
            if self.stranded is not None and self.pool is not None and job.backend in self.pool.by_name:
                self.stranded.watch(job)
        await self._rent_for_recovered()
        if self.queue:
            self._wake()
        if self.pool is not None:
            self.pool.on_change = self._wake
            self.pool.on_join = self.worker.add_lane  # a rented backend joins while the daemon runs
        self._start_worker(restarted=False)

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        if self.stranded is not None:
            self.stranded.stop()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - whatever ended it, it is stopped now
                pass
            self._task = None
        await self.ledger.flush_unsaved()

    @property
    def worker_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start_worker(self, *, restarted: bool) -> None:
        self._task = asyncio.create_task(self.worker.run(restarted), name="job-runner")
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

    # -- public API
    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def running_job(self) -> str | None:
        return self.worker.running

    async def submit(self, built: JobSpec, claim: IdempotencyClaim | None = None, *, front: bool = False,
                     retry_of: str | None = None, group_id: str | None = None, source: str | None = None,
                     page: PageRef | None = None) -> JobRecord:
        return (await self.submit_many([built], claim, front=front, retry_of=retry_of, group_id=group_id,
                                       source=source, page=page))[0]

    async def submit_many(self, specs: list[JobSpec], claim: IdempotencyClaim | None = None, *,
                          front: bool = False, group_id: str | None = None,
                          retry_of: str | None = None, source: str | None = None,
                          page: PageRef | list[PageRef] | None = None) -> list[JobRecord]:
        """Queue jobs, all or none (one transaction, and the whole lot within `max_queue`). `front`: at
        the head of the queue, in their order; `group_id`: one submission of variations; `source`: who
        submitted them (`api` when not said); `page`: each becomes a version of that page when it
        succeeds (its project resolved: `sidecar.jobs.pages` writes there), or one page per spec (a list:
        a chapter's pages)."""
        pages = page if isinstance(page, list) else [page] * len(specs)
        assert len(pages) == len(specs)
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
        rents = [self._admit(where, built.workflow, built.params.family) for where, built in zip(wheres, specs)]
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
            source=source or DEFAULT_SOURCE,
            page=ref,
            backend_reason=_renting_reason(rent),
        ) for where, built, ref, rent in zip(wheres, specs, pages, rents)]
        self._submitting += len(jobs)
        try:
            await self.store.insert_many(jobs, claim)  # a full disk raises DiskFull here: 507, nothing queued
        finally:
            self._submitting -= len(jobs)
        for job in jobs:
            self.ledger.live[job.id] = job
            self.queue.add(job.id, Place.of(job.seq or 0, rank))
            log.info("job %s queued (template %s, where %s, queue depth %d%s)", job.id, job.template, job.where_,
                     len(self.queue), ", at the front" if front else "")
            self.ledger.announce(job)
        for job, rent in zip(jobs, rents):
            if rent is not None and self.on_demand is not None:
                try:
                    self.on_demand.wait(job.id, rent[0])
                except SidecarError as exc:  # e.g. no vast.ai API key: nothing was rented
                    await self.rent_failed(rent[0].name, exc.code, exc.message)
        self._wake()
        return jobs

    def _admit(self, where: str, workflow: dict[str, Any],
               family: str | None = None) -> tuple[BackendSpec, str] | None:
        """Refuse now what no backend `where` allows admits (400, each backend's reason), and, while a
        training holds this machine's device, what only this machine's backends admit (409). A job an
        on-demand table could run instead is admitted: (that table, why nothing in the pool runs it)."""
        if self.pool is None:
            if where not in ("local", "any"):
                raise InvalidField(f"where: {where!r} names no backend; this daemon has one (`local`): configure "
                                   "[[backends]] tables to route jobs elsewhere.",
                                   {"field": "where", "value": where, "allowed": ["local", "any"]})
            self.device.training.refuse_if_training()
            return None
        needs = Needs.of(workflow, family)
        try:
            verdicts = admit(where, needs, self.pool.members, self.pool.local_models)
        except (InvalidField, NoBackendAdmits, FamilyNotSupported) as exc:
            table = self.on_demand.candidate(where, needs) if self.on_demand is not None else None
            if table is not None:
                return table, exc.message
            if not isinstance(exc, InvalidField) or where not in self.pool.rentable:
                raise
            raise InvalidField(f"where: {where!r} is a backend to rent (kind = \"vast\") and is not rented now: "
                               f"rent it first (`sidecar backends rent {where}`), or name another `where`.",
                               {**exc.details, "rentable": sorted(self.pool.rentable)}) from None
        admitting = {v.backend for v in verdicts if v.admitted}
        if all(self.pool.by_name[name].local for name in admitting):
            self.device.training.refuse_if_training()
        return None

    async def _rent_for_recovered(self) -> None:
        """Queued jobs that waited for an on-demand rental when the daemon stopped are rented for again."""
        if self.on_demand is None:
            return
        for job_id in list(self.queue):
            job = self.ledger.live.get(job_id)
            if job is None or job.status != "queued":
                continue
            try:
                rent = self._admit(job.where_ or self.default_where, job.workflow, job.params.family)
            except SidecarError:
                continue  # the router fails it with each backend's reason
            if rent is not None:
                try:
                    self.on_demand.wait(job.id, rent[0])
                except SidecarError as exc:
                    await self.rent_failed(rent[0].name, exc.code, exc.message)

    async def rent_failed(self, name: str, code: str, reason: str) -> None:
        """An on-demand rental ended before its backend joined: the jobs that waited for it fail with why
        (unless the daemon is stopping: they stay queued, rented for again at the next start)."""
        if self.on_demand is None or self._stopping:
            return
        for job_id in self.on_demand.give_up(name):
            job = self.ledger.live.get(job_id)
            if job is None or job.status in TERMINAL or not self.queue.remove(job_id):
                continue
            await self.ledger.finish_or_keep(
                job, "failed", code=code, details={"backend": name},
                message=f"Backend {name} was to be rented for this job (rent = \"on-demand\") and was not: {reason}.")
        self._wake()

    def _wake(self) -> None:
        self.worker.wake()

    async def get(self, job_id: str) -> JobRecord:
        job = self.ledger.find(job_id) or await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r}.", {"jobId": job_id})
        return job

    async def list(self, status: str | None, limit: int, group: str | None = None,
                   source: str | None = None, before: str | None = None) -> list[JobRecord]:
        jobs = await self.store.list(status, limit, group, source, before)
        # Live records carry progress newer than the last persisted one.
        return [self.ledger.freshest(j) for j in jobs]

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status in TERMINAL:
            raise InvalidState(f"Job {job_id} already {job.status}; nothing to cancel.",
                               {"jobId": job_id, "status": job.status})
        if job.status == "queued" and self.queue.remove(job_id):
            await self.ledger.finish_or_keep(job, "cancelled")
            return job
        # Running: the backend stops it (ComfyUI interrupt / engine step check) and we mark it cancelled
        # only once the backend confirms.
        self.executor.cancel_running(job_id)
        log.info("job %s cancel requested while running", job_id)
        return job

    async def group(self, group_id: str) -> list[JobRecord]:
        jobs = [self.ledger.freshest(j) for j in await self.store.group(group_id)]
        if not jobs:
            raise GroupNotFound(f"No group with id {group_id!r}.", {"groupId": group_id})
        return jobs

    async def cancel_group(self, group_id: str) -> list[JobRecord]:
        """Every unfinished job of a group: the queued ones leave the queue at once (so none can start
        while the others are being cancelled), then the running one is interrupted."""
        jobs = await self.group(group_id)
        for job_id in self.queue.remove_all([j.id for j in jobs if j.status == "queued"]):
            await self.ledger.finish_or_keep(self.ledger.live[job_id], "cancelled")
        for job in jobs:
            if job.status == "running" and self.executor.cancel_running(job.id):
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
        self.events.publish(self.queue.changed("queue.paused", self.worker.running))

    async def resume(self) -> None:
        if not self.queue.paused:
            return
        await self.store.set_queue_state(paused_at=None)
        self.queue.resume()
        log.info("queue resumed (%d waiting)", len(self.queue))
        self.events.publish(self.queue.changed("queue.resumed", self.worker.running))
        self._wake()

    def planned(self) -> dict[str, int]:
        """Queued jobs the router would put on each backend now (/health)."""
        return self.worker.planned()


def _renting_reason(rent: tuple[BackendSpec, str] | None) -> str | None:
    if rent is None:
        return None
    spec, why = rent
    return (f"renting backend {spec.name} for it (rent = \"on-demand\"; GET /backends shows the rental); it runs "
            f"there once that backend joins. Nothing in the pool runs it: {why}")
