"""What the job builder checks a submit against when there are several backends.

The builder resolves names (a `loraId` to its file) and refuses a model no backend could ever run; it
asks this catalog, the union of every backend's last seen listings and this machine's own model files
(which can be copied to a backend with an SSH target). Whether one particular backend admits the job is
the router's decision (`router.admit`), with a reason per backend. `widest_profile` is what the builder
holds a job to before that: the largest batch and ControlNet count any backend allows (sizes are left
to the router, whose refusal names each backend's limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.backends.pool import BackendPool
from sidecar.profiles import FamilySizes, Profile, get_profile

UNBOUNDED = 16384  # the largest side any request may give (jobs.params.Pixels)


class PoolCatalog:
    name = "pool"

    def __init__(self, pool: BackendPool):
        self.pool = pool

    async def list_models(self, folder: str) -> list[str] | None:
        names: set[str] = set(self.pool.local_models.get(folder, frozenset()))
        for m in self.pool.members:
            if m.caps is not None:
                names.update(m.caps.models.get(folder, frozenset()))
        return sorted(names)

    async def validate(self, workflow: dict[str, Any]) -> None:
        """Per backend, in the router: node types against each one's /object_info; ComfyUI's own
        validation at POST time stays the authority on values."""

    def models_dir(self, folder: str) -> Path | None:
        return self.pool.home.backend.models_dir(folder)  # type: ignore[arg-type]


def _default_size(profiles: list[Profile], family: str) -> tuple[int, int] | None:
    """A job's size when it names none: the first backend's that runs the family."""
    for p in profiles:
        if p.allows(family):
            sized = p.for_family(family)
            return sized.default_width, sized.default_height
    return None


def profiles_by_name(pool: BackendPool) -> dict[str, Profile]:
    """Each backend's profile, and each on-demand table's (a job it could run is rented for, not refused)."""
    named = {name: get_profile(spec.profile) for name, spec in pool.on_demand.items()}
    return {**named, **{m.name: m.profile for m in pool.members}}


def widest_profile(pool: BackendPool) -> Profile:
    profiles = list(profiles_by_name(pool).values())
    return Profile(
        name="+".join(dict.fromkeys(p.name for p in profiles)),
        # Sizes are the router's to refuse, with each backend's own limit in the answer.
        max_width=UNBOUNDED, max_height=UNBOUNDED,
        max_batch=max(p.max_batch for p in profiles),
        max_train_batch=max(p.max_train_batch for p in profiles),
        max_train_resolution=max(p.max_train_resolution for p in profiles),
        max_controlnets=max(p.max_controlnets for p in profiles),
        max_loras=max(p.max_loras for p in profiles),
        # Every family some backend runs, its sizes unbounded here as the others are (the router's to refuse).
        families={f: FamilySizes(UNBOUNDED, UNBOUNDED, default=_default_size(profiles, f))
                  for p in profiles for f in p.family_names},
        description="the widest of the backends' profiles (each backend holds jobs to its own)",
    )
