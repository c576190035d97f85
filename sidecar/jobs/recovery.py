"""Picking up the jobs a stopped daemon left unfinished, once at start, before the worker runs.

Queued jobs go back in their places. A job that was running is reconciled with the backend by its
prompt id (at the head of the queue: collected, or found lost and re-queued once); one the backend never
accepted (no prompt id, as with the embedded engine) runs again, which counts as its one re-queue.
Nothing is silently dropped or run twice. A paused queue stays paused.
"""

from __future__ import annotations

import logging

from sidecar.jobs.ledger import MAX_LOSSES, Ledger
from sidecar.jobs.queue import JobQueue, Place
from sidecar.jobs.store import JobRecord

log = logging.getLogger("sidecar.jobs")


async def recover(ledger: Ledger, queue: JobQueue) -> list[JobRecord]:
    """Put the store's unfinished jobs back in `ledger` and `queue`; return those still `running` (their
    prompt is on a backend: the caller watches any on a pool backend that may never come back)."""
    pinned: list[JobRecord] = []
    for job in await ledger.store.unfinished():
        if job.status == "running":
            ledger.recovering.add(job.id)
            if job.prompt_id is None:
                if job.attempts >= MAX_LOSSES:
                    await ledger.finish(job, "failed", code="lost_on_restart",
                                        message="The job was running when the daemon stopped and had "
                                                "already been re-queued once.")
                    continue
                await ledger.requeue(job)
                log.info("job %s was running at shutdown: re-queued (attempt %d)", job.id, job.attempts + 1)
            ledger.live[job.id] = job
            if job.status == "running":
                queue.requeue_head(job.id)
                pinned.append(job)
            else:
                queue.add(job.id, Place.of(job.seq or 0, job.front_rank))
        else:
            ledger.live[job.id] = job
            queue.add(job.id, Place.of(job.seq or 0, job.front_rank))
    state = await ledger.store.queue_state()
    if state.get("paused_at"):
        queue.pause(str(state["paused_at"]))
        log.info("the queue is paused (since %s): queued jobs wait for POST /queue/resume", state["paused_at"])
    if queue:
        log.info("recovered %d unfinished job(s) from the store", len(queue))
    return pinned
