"""How a job ends badly: failed with a code, cancelled (inside a backend), or lost by its backend."""

from __future__ import annotations

from typing import Any

from sidecar.errors.base import SidecarError


class JobFailed(SidecarError):
    """A job ended in failure. The code says why (execution_error, black_image, timeout, ...)."""

    code = "execution_error"


class JobCancelled(Exception):
    """Raised inside a backend when the job it runs was cancelled (not an error for the user)."""


class PromptLost(SidecarError):
    """The backend lost the job (ComfyUI restarted or forgot it). The runner re-queues once."""

    code = "prompt_lost"
    http_status = 500


class RegJobFailed(JobFailed):
    """A `sidecar dataset reg` render failed on the daemon; images so far are kept (run again to resume)."""

    code = "job_failed"

    def __init__(self, name: str, job: dict[str, Any]):
        err = job.get("error") or {}
        self.name = name
        self.job = job
        self.job_code = err.get("code", job.get("status"))
        super().__init__(f"{name}: job {job.get('id', '?')} {job.get('status')}: "
                         f"{err.get('message', 'no reason given')} ({self.job_code}). Images so far are kept; "
                         "run the same command to resume.",
                         {"jobId": job.get("id"), "jobCode": self.job_code})
