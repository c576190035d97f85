"""The stage's view of the daemon: `sidecar.client.DaemonClient`, with its two exceptions turned into
the stage's errors (and so its exit codes), once, here: nothing answers or not the daemon ->
DaemonNotRunning, 409 training -> DeviceBusy (with the training's step and ETA), other 4xx ->
RequestRefused (the daemon's code and message), 5xx -> JobFailedError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_stage.errors import DaemonNotRunning, DeviceBusy, JobFailedError, RequestRefused
from sidecar.api.models import JobRequest
from sidecar.api.responses import Job, JobGroup, JobSummary
from sidecar.client import DaemonClient as BaseClient
from sidecar.client import DaemonRefused, DaemonUnavailable
from sidecar.config import DEFAULT_DAEMON_URL
from sidecar.device import busy_message

DEFAULT_URL = DEFAULT_DAEMON_URL


def busy_error(exc: DaemonRefused) -> DeviceBusy:
    training = exc.details.get("training") or {}
    return DeviceBusy(f"{busy_message(training)} Run again then.", {"training": training, "daemonMessage": exc.message})


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    try:
        yield
    except DaemonUnavailable as exc:
        raise DaemonNotRunning(f"{exc.message} Or point --daemon at the one running.", exc.details) from None
    except DaemonRefused as exc:
        if exc.device_busy:
            raise busy_error(exc) from None
        details = {"status": exc.status, "daemonCode": exc.code, **exc.details}
        if 400 <= exc.status < 500:
            raise RequestRefused(f"The daemon refused the request: {exc.message}", details, code=exc.code) from None
        raise JobFailedError(f"The daemon could not run the job: {exc.message}", details, code=exc.code) from None


class DaemonClient(BaseClient):
    """Typed at this edge: a `JobRequest` goes out, the daemon's `Job` (the model its answers are
    serialized from) comes back; progress updates stay the raw snapshots the progress bar reads."""

    async def run_job(self, request: JobRequest, on_update: Callable[[dict[str, Any]], None],
                      on_preview: Callable[[dict[str, Any]], None] | None = None) -> Job:
        with stage_errors():
            body = request.model_dump(by_alias=True, exclude_none=True, mode="json")
            return Job.model_validate(await super().run(body, on_update, on_preview), strict=False)

    async def job_image(self, job: JobSummary) -> bytes:
        """A finished job's PNG, from its own `output.url`."""
        with stage_errors():
            return await self.request("GET", job.output.url if job.output else f"/jobs/{job.id}/image", raw=True)

    async def job_upscaled(self, job: JobSummary) -> bytes:
        """A finished job's print upscale (`upscaleModel`), from its own `upscaled.url`."""
        with stage_errors():
            return await self.request("GET", job.upscaled.url if job.upscaled else f"/jobs/{job.id}/upscaled",
                                      raw=True)

    async def full_job(self, job_id: str) -> Job:
        """One job in full (a group lists summaries: the workflow is only here)."""
        with stage_errors():
            return Job.model_validate(await self.job(job_id), strict=False)

    async def lora_hashes(self) -> dict[str, str | None]:
        """Each LoRA file the daemon lists, with its SHA-256 where the daemon has the file (GET /models?sha256=1)."""
        with stage_errors():
            listed = await self.request("GET", "/models?sha256=1")
        return {m["name"]: m.get("sha256") for m in listed.get("loras", [])}

    # -- groups of variations (drafts, --variations)
    async def submit_group(self, request: JobRequest) -> JobGroup:
        """POST /jobs with `variations`: the group, its jobs in seed order."""
        with stage_errors():
            body = request.model_dump(by_alias=True, exclude_none=True, mode="json")
            return JobGroup.model_validate(await self.request("POST", "/jobs", json=body), strict=False)

    async def group(self, group_id: str) -> JobGroup:
        with stage_errors():
            return JobGroup.model_validate(await self.request("GET", f"/groups/{group_id}"), strict=False)

    async def cancel_group_quietly(self, group_id: str) -> None:
        """Best effort, on the way out (Ctrl-C): never raises, never waits long."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.request("POST", f"/groups/{group_id}/cancel"), 5)
