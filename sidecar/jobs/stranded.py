"""A job recovered after a daemon restart whose backend does not come back.

After a restart a job that was running on a backend of the pool waits for that backend: its prompt is
there, and collecting it (or learning that the server lost it) is the only way to neither lose the page
nor render it twice. A backend that never answers again must not hold the job for ever: after
`backend_recovery_timeout` seconds it is handed over by the restart rule (re-queued once): its prompt on
the absent backend is recorded to be interrupted there when it answers (`BackendPool.abandon`, kept in
the job database), then the job is queued again without it for the backends its `where` allows. A job
already re-queued once fails `lost_on_restart`; one no other backend admits fails `backend_gone`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.backends.pool import BackendPool
from sidecar.backends.router import admit
from sidecar.errors import FamilyNotSupported, InvalidField, NoBackendAdmits
from sidecar.jobs.ledger import MAX_LOSSES, Ledger
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.store import JobRecord

log = logging.getLogger("sidecar.jobs")


class Stranded:
    """Watches the jobs recovered onto a backend of the pool; the runner cancels the watches at stop."""

    def __init__(self, ledger: Ledger, queue: JobQueue, pool: BackendPool, *, default_where: str, timeout: float,
                 wake: Callable[[], None]):
        self.ledger = ledger
        self.queue = queue
        self.pool = pool
        self.default_where = default_where
        self.timeout = timeout
        self.wake = wake  # the lanes look at the queue again
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, job: JobRecord) -> None:
        """Hand `job` over after `timeout` if its backend has not taken it back by then."""
        task = asyncio.create_task(self._later(job), name=f"hand-over-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _later(self, job: JobRecord) -> None:
        await asyncio.sleep(self.timeout)
        try:
            await self.hand_over(job)
        except Exception:  # noqa: BLE001 - a store fault: the job stays pinned, as before the timeout
            log.exception("job %s: handing it over from its absent backend failed", job.id)

    async def hand_over(self, job: JobRecord) -> None:
        pool, timeout = self.pool, self.timeout
        m = pool.by_name.get(job.backend or "")
        if job.status != "running" or job.prompt_id is None or m is None or m.state == "up":
            return  # collected or lost already, or its backend is back (its lane takes the job)
        if not self.queue.remove(job.id):
            return  # its backend's lane took it meanwhile
        prompt_id, where = job.prompt_id, job.where_ or self.default_where
        details = {"backend": m.name, "promptId": prompt_id, "waitedSeconds": timeout, "where": where}
        gone = (f"Backend {m.name} ran this job when the daemon stopped and has not answered in the "
                f"{timeout:g} s since (backend_recovery_timeout; {m.down_reason or 'no answer'}).")
        others = [x for x in pool.members if x is not m]
        elsewhere: str | None = None
        try:
            admit(where, self.ledger.needs_of(job), others, pool.local_models)
        except (NoBackendAdmits, FamilyNotSupported, InvalidField) as exc:
            elsewhere = exc.message
        # Recorded before the job changes: a crash in between leaves the job holding the prompt (reconciled
        # by the next start, which then ignores this record).
        await pool.abandon(m, prompt_id, job.id)
        if job.attempts >= MAX_LOSSES:
            await self.ledger.finish_or_keep(job, "failed", code="lost_on_restart", details=details,
                                             message=f"{gone} The job had already been re-queued once.")
            return
        if elsewhere is not None:
            await self.ledger.finish_or_keep(
                job, "failed", code="backend_gone", details={**details, "elsewhere": elsewhere},
                message=f"{gone} No other backend can take it: {elsewhere} Submit it again once that backend is "
                        "back, or with another `where`.")
            return
        await self.ledger.requeue(job)
        self.queue.requeue_head(job.id)
        log.warning("job %s: backend %s still away %g s after the restart; re-queued once for %r (its prompt %s "
                    "is interrupted there when it answers)", job.id, m.name, timeout, where, prompt_id)
        self.wake()
