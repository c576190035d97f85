"""The job state machine, written down once: which transitions are allowed.

queued -> running -> succeeded | failed | cancelled; queued -> cancelled | failed;
running -> queued (re-queued once when the backend lost the prompt, or after a daemon restart).
"""

from __future__ import annotations

from sidecar.errors import InvalidState
from sidecar.statuses import JOB_TERMINAL

TERMINAL = JOB_TERMINAL

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def check_transition(job_id: str, current: str, new: str) -> None:
    if new not in TRANSITIONS[current]:
        raise InvalidState(
            f"Job {job_id} is {current}; it cannot become {new}.",
            {"jobId": job_id, "status": current, "requested": new},
        )
