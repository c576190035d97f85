"""The status words of jobs and training runs, declared once: the wire models, the stores, the state
machines, the routes' filters and the clients all read them from here.

A job: queued -> running -> succeeded | failed | cancelled (`sidecar.jobs.states` has the moves).
A training run adds `interrupted` (the daemon stopped while it trained; `resume` continues it).
"""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
JOB_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
RUN_ACTIVE = frozenset({"queued", "running"})
RUN_TERMINAL = frozenset(RUN_STATUSES) - RUN_ACTIVE
RUN_RESUMABLE = frozenset({"interrupted", "cancelled", "failed"})
