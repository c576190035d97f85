"""The live jobs and every change of their state: persisted first, then announced.

The job runner, the worker that runs jobs, the restart recovery and the hand-over of stranded jobs all
change a job's state here and nowhere else, so the rules hold in one place: a transition is checked
(`sidecar.jobs.states`), written to the store, applied to the live record, then published on the bus.
An end state the store cannot write (the disk is full) is kept in memory, answered from here, and
written once the store takes writes again (`flush_unsaved`, before the next job and at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sidecar.backends.admission import Needs
from sidecar.events import EventBus
from sidecar.jobs.states import check_transition
from sidecar.jobs.store import JobRecord, JobStore
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.jobs")

MAX_LOSSES = 1  # a lost prompt is re-queued once, then the job fails


@dataclass(frozen=True)
class JobChanged:
    """Published on the event bus: `type` is job.queued|started|progress|succeeded|failed|cancelled. The
    bus's encoder (the API layer) turns it into the wire `JobEvent` at once, so later changes to the
    live record do not leak into an event already sent."""

    type: str
    job: JobRecord


class Ledger:
    def __init__(self, store: JobStore, events: EventBus):
        self.store = store
        self.events = events
        self.live: dict[str, JobRecord] = {}  # queued + running jobs, the source of truth while live
        # Ended jobs whose end state the store could not write yet (disk full): answered from here.
        self.unsaved: dict[str, JobRecord] = {}
        # Jobs picked up after a restart, until they end: a loss after a re-queue is still `lost_on_restart`.
        self.recovering: set[str] = set()
        self._needs: dict[str, Needs] = {}

    def find(self, job_id: str) -> JobRecord | None:
        """The live or unsaved record of a job (newer than the store's), else None."""
        return self.live.get(job_id) or self.unsaved.get(job_id)

    def freshest(self, job: JobRecord) -> JobRecord:
        """`job` as read from the store, or its live record when that carries newer progress."""
        return self.find(job.id) or job

    def needs_of(self, job: JobRecord) -> Needs:
        """What the job's workflow needs of a backend (computed once per job)."""
        needs = self._needs.get(job.id)
        if needs is None:
            needs = self._needs[job.id] = Needs.of(job.workflow, job.params.family)
        return needs

    async def set(self, job: JobRecord, status: str, **fields: Any) -> None:
        check_transition(job.id, job.status, status)
        await self.store.update(job.id, status=status, **fields)
        self._apply(job, status, fields)

    def set_soon(self, job: JobRecord, status: str, **fields: Any) -> asyncio.Future[Any]:
        """For `running` only (the live record answers for a running job): the write is handed to the
        store in call order and the change announced at once; the future says when it is on disk."""
        check_transition(job.id, job.status, status)
        written = self.store.update_soon(job.id, status=status, **fields)
        self._apply(job, status, fields)
        return written

    async def requeue(self, job: JobRecord) -> None:
        """The one re-queue (MAX_LOSSES) of a job whose prompt was lost or never taken: back to `queued`
        without its prompt id; the caller puts it at the head of the queue."""
        job.attempts += 1
        job.prompt_id = None
        # Queued again: no backend runs it until the router picks one (maybe another), so none is shown.
        await self.set(job, "queued", attempts=job.attempts, prompt_id=None, progress_step=0, backend=None,
                       backend_reason=None)

    def announce(self, job: JobRecord) -> None:
        kind = "started" if job.status == "running" else job.status
        self.events.publish(JobChanged(f"job.{kind}", job))

    def _apply(self, job: JobRecord, status: str, fields: dict[str, Any]) -> None:
        job.status = status
        for k, v in fields.items():
            setattr(job, k, v)
        log.info("job %s -> %s", job.id, status)
        self.announce(job)

    async def finish(self, job: JobRecord, status: str, *, code: str | None = None, message: str | None = None,
                     details: dict[str, Any] | None = None, **fields: Any) -> None:
        await self.set(job, status, **self._end_fields(job, status, code, message, details, fields))
        if code:
            log.info("job %s failed: %s: %s", job.id, code, message)
        self._forget(job)

    def _forget(self, job: JobRecord) -> None:
        self.live.pop(job.id, None)
        self.recovering.discard(job.id)
        self._needs.pop(job.id, None)

    @staticmethod
    def _end_fields(job: JobRecord, status: str, code: str | None, message: str | None,
                    details: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {"finished_at": now_iso(), **fields}
        if job.started_at is not None:
            # Written again with the end: the `running` write that first carried it may have failed (a full
            # disk), and a job that ran must not end with startedAt and durationMs null.
            extra.setdefault("started_at", job.started_at)
        if code:
            extra.update(error_code=code, error_message=message, error_details=details or {})
        if status == "succeeded" and job.progress_total:
            extra["progress_step"] = job.progress_total
        return extra

    async def finish_or_keep(self, job: JobRecord, status: str, *, code: str | None = None,
                             message: str | None = None, details: dict[str, Any] | None = None) -> None:
        """End a job; if the store cannot take the write, the end state lives in memory (answered by
        get/list, announced) and is written before the next job runs or at shutdown."""
        try:
            await self.finish(job, status, code=code, message=message, details=details)
        except Exception as exc:  # noqa: BLE001 - the store is what failed; the job still ends
            log.error("job %s: cannot write its end state (%s); kept in memory until the store takes writes",
                      job.id, exc)
            self._apply(job, status, self._end_fields(job, status, code, message, details, {}))
            self.unsaved[job.id] = job
            self.live.pop(job.id, None)
            self.recovering.discard(job.id)

    async def flush_unsaved(self) -> None:
        for job in list(self.unsaved.values()):
            try:
                await self.store.update(job.id, status=job.status, started_at=job.started_at,
                                        finished_at=job.finished_at, error_code=job.error_code, error_message=job.error_message,
                                        error_details=job.error_details, progress_step=job.progress_step)
            except Exception as exc:  # noqa: BLE001 - still cannot write: keep it for the next try
                log.debug("job %s: end state still not written (%s)", job.id, exc)
                return
            del self.unsaved[job.id]
            log.info("job %s: end state written (%s)", job.id, job.status)
