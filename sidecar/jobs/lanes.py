"""The job worker: takes queued jobs and runs them, one at a time under the device lock, or, with several
backends (`sidecar.backends`), one lane per backend, each taking whenever it is free the first job the
router plans onto it. A job nothing admits any more fails `no_backend_admits` here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sidecar.backends.member import Member
from sidecar.backends.pool import BackendPool
from sidecar.backends.router import Pick, Queued, plan
from sidecar.device import Device
from sidecar.jobs.execute import Executor
from sidecar.jobs.ledger import Ledger
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.states import TERMINAL
from sidecar.jobs.store import JobRecord

LANE_POLL = 1.0  # a pool lane looks at the queue again at least this often (a training ended, estimates moved)


class Worker:
    def __init__(self, ledger: Ledger, queue: JobQueue, executor: Executor, device: Device, *,
                 pool: BackendPool | None, default_where: str):
        self.ledger = ledger
        self.queue = queue
        self.executor = executor
        self.device = device
        self.pool = pool
        self.default_where = default_where
        self.wakeup = asyncio.Event()
        self.running: str | None = None  # the job id being run (a single-backend daemon)
        self.held: Callable[[str], bool] = lambda job_id: False  # waits for a backend rented on demand
        self._lanes: asyncio.TaskGroup | None = None

    def wake(self) -> None:
        """Something changed (a job queued, a backend came up): every lane looks at the queue again."""
        self.wakeup.set()
        if self.pool is not None:
            for m in self.pool.members:
                m.wakeup.set()

    async def run(self, restarted: bool) -> None:
        if restarted:
            await self.executor.fail_abandoned()
        if self.pool is not None:
            async with asyncio.TaskGroup() as lanes:
                self._lanes = lanes
                for member in self.pool.members:
                    self.add_lane(member)
            return
        while True:
            while self.queue.next_job() is None:  # none waits, or the queue is paused
                self.wakeup.clear()
                await self.wakeup.wait()
            async with self.device.lock:
                await self.ledger.flush_unsaved()
                job_id = self.queue.take()
                if job_id is None:
                    continue
                job = self.ledger.live.get(job_id)
                if job is None or job.status in TERMINAL:
                    continue
                self.device.busy_with = f"job:{job_id}"
                self.running = job_id
                try:
                    await self.executor.run_one(job)
                finally:
                    self.running = None
                    self.device.busy_with = None

    def add_lane(self, m: Member) -> None:
        """A lane for `m`: at the start, and for a backend that joins later (a rented one)."""
        if self._lanes is not None:
            self._lanes.create_task(self._lane(m), name=f"job-lane-{m.name}")

    async def _lane(self, m: Member) -> None:
        """One backend of the pool: whenever it is free, take the first job the router plans onto it.
        Ends when the backend leaves the pool (a rented one, destroyed)."""
        assert self.pool is not None
        while self.pool.by_name.get(m.name) is m:
            m.wakeup.clear()
            picked = None
            if m.available and self.queue.runnable():
                async with m.lock:  # a local backend's lock is the device lock (training waits, or holds it)
                    m.holding = True
                    try:
                        await self.ledger.flush_unsaved()
                        picked = await self._pick(m)
                        if picked is not None:
                            await self._run_on_lane(m, *picked)
                    finally:
                        m.holding = False
                if picked is not None:
                    self.wake()  # the plan changed for every lane
                    continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop the cancel that stops the lane.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LANE_POLL):
                    await m.wakeup.wait()

    async def _run_on_lane(self, m: Member, job: JobRecord, pick: Pick) -> None:
        if m.local:
            self.device.busy_with = f"job:{job.id}"
        self.running = job.id
        try:
            await self.executor.run_one(job, m, pick)
        finally:
            if self.running == job.id:
                self.running = None
            if m.local:
                self.device.busy_with = None

    async def _pick(self, m: Member) -> tuple[JobRecord, Pick] | None:
        assert self.pool is not None
        items = []
        for job_id in self.queue.runnable():  # in order; while paused only those already running
            job = self.ledger.live.get(job_id)
            if job is None or job.status in TERMINAL or self.held(job_id):
                continue
            # A job that was running when the daemon stopped is reconciled where its prompt is.
            pinned = job.backend if job.status == "running" and job.prompt_id else None
            items.append(Queued(job_id, job.where_ or self.default_where, self.ledger.needs_of(job), pinned))
        p = plan(items, self.pool.members, self.pool.local_models)
        for job_id, reasons in p.stuck.items():
            job = self.ledger.live[job_id]
            self.queue.remove(job_id)
            listed = "; ".join(f"{k}: {v}" for k, v in reasons.items())
            gone = self.pool.departed.get(job.where_ or self.default_where)
            if gone is not None:  # it named a rented backend that was released meanwhile: say why
                await self.ledger.finish_or_keep(
                    job, "failed", code="backend_gone", details={"where": job.where_, "backends": reasons},
                    message=f"Backend {job.where_} left the pool ({gone}) and nothing else `where` allows can take "
                            "this job; submit it again with another `where`, or rent it again.")
                continue
            await self.ledger.finish_or_keep(job, "failed", code="no_backend_admits",
                                       message=f"No backend admits this job any more: {listed}.",
                                       details={"where": job.where_, "backends": reasons})
        pick = p.picks.get(m.name)
        if pick is None or pick.job_id not in self.queue:
            return None
        self.queue.remove(pick.job_id)
        job = self.ledger.live.get(pick.job_id)
        if job is None or job.status in TERMINAL:
            return None
        return job, pick

    def planned(self) -> dict[str, int]:
        """Queued jobs the router would put on each backend now (/health)."""
        if self.pool is None:
            return {}
        items = [Queued(j, job.where_ or self.default_where, self.ledger.needs_of(job))
                 for j in self.queue if (job := self.ledger.live.get(j)) is not None and job.status not in TERMINAL]
        return plan(items, self.pool.members, self.pool.local_models).queued
