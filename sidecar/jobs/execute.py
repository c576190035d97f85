"""Running one job on a backend: its callbacks (progress, prompt id, previews), its cancellation, and how
it ends. Whatever goes wrong, the job ends (failed with a code) and the worker goes on: an exception from
the backend or the store fails that job (a full disk as `disk_full`, anything unforeseen as
`internal_error`); a prompt the backend lost is re-queued once (`MAX_LOSSES`), then the job fails
`prompt_lost` (or `lost_on_restart` for a job picked up after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend, RunContext
from sidecar.backends.lane import run_on
from sidecar.backends.member import Member
from sidecar.backends.pool import BackendPool
from sidecar.backends.router import Pick
from sidecar.errors import JobCancelled, PromptLost, SidecarError
from sidecar.jobs.faults import disk_full, log_write_failure
from sidecar.jobs.ledger import MAX_LOSSES, JobChanged, Ledger
from sidecar.jobs.pages import Judge, publish_page_job
from sidecar.jobs.previews import Previews
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.states import TERMINAL
from sidecar.jobs.store import UPSCALED_SUFFIX, JobRecord
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.jobs")

PROGRESS_PERSIST_INTERVAL = 1.0


class Executor:
    def __init__(self, ledger: Ledger, queue: JobQueue, backend: GenerationBackend, outputs_dir: Path,
                 previews: Previews, *, pool: BackendPool | None, wake: Callable[[], None], judge: Judge | None = None):
        self.ledger = ledger
        self.queue = queue
        self.backend = backend
        self.outputs_dir = outputs_dir
        self.previews = previews
        self.pool = pool
        self.wake = wake  # the worker looks at the queue again (a lost job is back at its head)
        self.judge = judge  # a page job's likeness, for its log entry
        self.cancel_events: dict[str, asyncio.Event] = {}  # per running job: set to cancel it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind_loop(self) -> None:
        """Called from the event loop at start: backends may report progress from a worker thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def cancel_running(self, job_id: str) -> bool:
        """Ask the backend running `job_id` to stop it; False if it is not running here."""
        event = self.cancel_events.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    async def run_one(self, job: JobRecord, member: Member | None = None, pick: Pick | None = None) -> None:
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
                await self.ledger.finish_or_keep(job, "failed", code=failure.code, message=failure.message,
                                           details=failure.details)

    async def fail_abandoned(self) -> None:
        """A job the dead worker was running (not queued again) can be in any state in the backend: fail it."""
        for job in list(self.ledger.live.values()):
            if job.status == "running" and job.id not in self.queue:
                await self.ledger.finish_or_keep(job, "failed", code="internal_error",
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
            running_write = self.ledger.set_soon(job, "running", started_at=now_iso(), progress_step=0, **routed)
        cancel = asyncio.Event()
        self.cancel_events[job.id] = cancel
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
            self.ledger.events.publish(JobChanged("job.progress", job))
            now = time.monotonic()
            if now - last_persist >= PROGRESS_PERSIST_INTERVAL or step == total:
                last_persist = now
                written = self.ledger.store.update_soon(job.id, progress_step=step, progress_total=total)
                written.add_done_callback(log_write_failure)

        async def on_prompt_id(prompt_id: str) -> None:
            # On disk before the live record shows it: a job whose prompt id a client saw is reconciled by
            # that id after a restart (the restart tests stop the daemon as soon as they see it).
            await self.ledger.store.update(job.id, prompt_id=prompt_id)
            job.prompt_id = prompt_id

        async def on_workflow(workflow: dict[str, Any]) -> None:
            job.workflow = workflow
            await self.ledger.store.update(job.id, workflow=workflow)

        def on_queued(ahead: int | None) -> None:
            if ahead != job.queued_behind:
                job.queued_behind = ahead
                self.ledger.events.publish(JobChanged("job.progress", job))

        preview_due, on_preview = self.previews.callbacks(job.id, self._loop, self._loop_thread, job.attempts)
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
                result = await run_on(self.pool, member, ctx, self.ledger.needs_of(job), copies)
            else:
                result = await self.backend.run(ctx)
        except JobCancelled as exc:
            if str(exc):  # e.g. interrupted in ComfyUI's own UI, not through our API
                log.info("job %s cancelled: %s", job.id, exc)
            await self.ledger.finish(job, "cancelled")
        except PromptLost as exc:
            await self._lost(job, exc)
        except SidecarError as exc:
            await self.ledger.finish(job, "failed", code=exc.code, message=exc.message, details=exc.details)
        except OSError as exc:
            full = disk_full(exc, "the job's image")
            if full is None:
                raise
            await self.ledger.finish(job, "failed", code=full.code, message=full.message, details=full.details)
        else:
            job.device = result.device
            finished_at = now_iso()
            page_version = None
            if job.page is not None:
                # Written before the job is recorded as succeeded: `pageVersion` on a job means the files
                # are there. A fault here fails the job with nothing written (run_one: its code).
                page_version = await asyncio.to_thread(publish_page_job, job, Path(result.output_path),
                                                       Path(result.upscaled_path) if result.upscaled_path else None,
                                                       replace(job, finished_at=finished_at).duration_ms(),
                                                       self.judge)
                log.info("job %s -> %s v%d (%s)", job.id, f"ch{page_version.chapter:02d}_p{page_version.page:03d}",
                         page_version.version, page_version.file)
            await self.ledger.finish(job, "succeeded", output_file=str(result.output_path), device=result.device,
                               upscaled_file=str(result.upscaled_path) if result.upscaled_path else None,
                               finished_at=finished_at, page_version=page_version)
        finally:
            job.queued_behind = None
            self.cancel_events.pop(job.id, None)
            if running_write is not None and not running_write.done():
                await asyncio.wait([running_write])  # written before the end state, in store order
            if running_write is not None and running_write.exception() is not None:
                # The end state written after it is what counts; a full disk failed the job already.
                log.warning("job %s: its `running` state was not written: %s", job.id, running_write.exception())

    async def _lost(self, job: JobRecord, exc: PromptLost) -> None:
        after_restart = job.id in self.ledger.recovering
        if job.attempts >= MAX_LOSSES:
            code = "lost_on_restart" if after_restart else "prompt_lost"
            await self.ledger.finish(job, "failed", code=code,
                               message=f"{exc.message} The job had already been re-queued once.",
                               details=exc.details)
            return
        await self.ledger.requeue(job)
        log.warning("job %s lost by the backend (%s): re-queued once", job.id, exc.message)
        self.queue.requeue_head(job.id)
        self.wake()
