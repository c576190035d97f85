"""Renting on demand: a `[[backends]] kind = "vast"` table with `rent = "on-demand"` is rented by the daemon
when a job is queued that no backend in the pool admits, but that table's profile would.

What it owns: which table a job may be rented for (`candidate`: its `where` names the table, one of its
tags, or `any`; the table's profile admits the job's family, sizes, batch and ControlNets; its models are
not asked, since a rented ComfyUI gets what it lacks copied to it), starting that rental (one per table at
once: a second job waits for the same one), and which queued jobs wait for which rental (the router
leaves those alone until the backend joins). What it does not: the rental itself (`renting.py`, under
the table's limits) and failing the waiting jobs when it fails (the job runner, `JobRunner.rent_failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sidecar.backends.admission import Capabilities, Needs, judge
from sidecar.backends.pool import BackendPool
from sidecar.config.backends import BackendSpec
from sidecar.profiles import get_profile

log = logging.getLogger("sidecar.backends")


class OnDemand:
    def __init__(self, pool: BackendPool, rent: Callable[[BackendSpec], object], renting: Callable[[str], bool]):
        """`rent(spec)` starts renting a table; `renting(name)` says whether a rental of it is under way."""
        self.pool = pool
        self._rent = rent
        self._renting = renting
        self.waiting: dict[str, str] = {}  # job id -> the table it waits for

    def candidate(self, where: str, needs: Needs) -> BackendSpec | None:
        """The first on-demand table `where` allows whose profile admits the job, else None."""
        for spec in self.pool.on_demand.values():
            if where not in ("any", spec.name, *spec.tags):
                continue
            # Unknown capabilities: nothing about its models or node types refuses it (they are copied there).
            verdict = judge(spec.name, get_profile(spec.profile), Capabilities(), needs, can_copy=True,
                            local_models=self.pool.local_models, ssh_hint="")
            if verdict.admitted:
                return spec
        return None

    def wait(self, job_id: str, spec: BackendSpec) -> bool:
        """The job waits for `spec`'s backend; rented now unless it is in the pool or being rented.
        True when this call started the rental."""
        self.waiting[job_id] = spec.name
        if spec.name in self.pool.by_name or self._renting(spec.name):
            return False
        log.info("backend %s: renting on demand for job %s", spec.name, job_id)
        self._rent(spec)
        return True

    def holds(self, job_id: str) -> bool:
        """Whether the router should leave this job alone: its rented backend has not joined yet."""
        name = self.waiting.get(job_id)
        if name is None:
            return False
        if name in self.pool.by_name:
            del self.waiting[job_id]  # it joined: routed as any other job from now on
            return False
        return True

    def give_up(self, name: str) -> list[str]:
        """The rental of `name` ended before it joined: the jobs that waited for it (forgotten here)."""
        jobs = [job_id for job_id, table in self.waiting.items() if table == name]
        for job_id in jobs:
            del self.waiting[job_id]
        return jobs
