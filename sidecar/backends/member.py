"""One backend of the pool as the router and the job runner see it: its backend object, profile, tags,
lock, health state, last seen capabilities and measured speed.

Each member has its own one-job-at-a-time lock; a local member (the embedded engine, a managed or
loopback ComfyUI) uses the machine's device lock instead, so training on the laptop stops only the
laptop's rendering. The speed is measured, not configured: seconds per sampler step, from the time
between consecutive progress reports of the jobs it ran (an exponential moving average).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.backend import GenerationBackend
from sidecar.backends.admission import Capabilities, Needs, Verdict, judge
from sidecar.config.backends import SshTarget
from sidecar.profiles import Profile

State = Literal["unknown", "up", "down"]
# Before a backend has run anything its speed is unknown: all start equal, and the first jobs measure them.
PRIOR_SECONDS_PER_STEP = 1.0
# What switching checkpoints costs a backend (reading 2-4 GB from disk), in the router's estimates.
CHECKPOINT_SWITCH_SECONDS = 5.0
EMA = 0.3


@dataclass(eq=False)
class Member:
    name: str
    backend: GenerationBackend
    profile: Profile
    kind: str  # "embedded" | "comfyui attached" | "comfyui managed" | "comfyui rented"
    local: bool
    lock: asyncio.Lock
    tags: tuple[str, ...] = ()
    url: str | None = None
    ssh: SshTarget | None = None
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    state: State = "unknown"
    down_reason: str | None = None
    caps: Capabilities | None = None
    device: str | None = None
    seconds_per_step: float | None = None
    loaded_checkpoint: str | None = None
    running: str | None = None  # the job id it runs now
    # The router's guess for a backend that has not run anything yet: the others' mean (set each plan).
    prior_speed: float = PRIOR_SECONDS_PER_STEP
    holding: bool = False  # its own lane holds its lock (else a held lock is a training's)
    jobs_run: int = 0
    went_down: asyncio.Event = field(default_factory=asyncio.Event)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Prompt ids of jobs taken away from it while it was down: interrupted when it answers again, so a
    # job re-run elsewhere never also finishes here.
    abandoned: list[str] = field(default_factory=list)
    rental: Callable[[], dict[str, Any]] | None = None  # a rented machine: its cost and limits now (/health)
    # (folder, name, local file) -> True when the backend fetched it itself (a rented one, from the bucket)
    fetch: Callable[[str, str, Path], Awaitable[bool]] | None = None
    _run_started: float = 0.0
    _run_cost: float = 0.0
    _step: tuple[int, int, float] | None = None  # (step, total, when) of the last progress report

    # -- state
    @property
    def available(self) -> bool:
        """Takes jobs now: answering, and its lock not held by something else (a training on the laptop)."""
        return self.state == "up" and (self.holding or not self.lock.locked())

    def mark_up(self) -> bool:
        """True when this is a change (it rejoins routing)."""
        changed = self.state != "up"
        self.state, self.down_reason = "up", None
        self.went_down.clear()
        return changed

    def mark_down(self, reason: str) -> bool:
        changed = self.state != "down"
        self.state, self.down_reason = "down", reason
        self.loaded_checkpoint = None  # a restarted server holds nothing
        self.went_down.set()
        return changed

    # -- admission
    def judge(self, needs: Needs, local_models: dict[str, frozenset[str]]) -> Verdict:
        hint = "" if self.local else " (add ssh = \"user@host:ComfyUI-folder\" to its [[backends]] table)"
        engine_families = getattr(self.backend, "families", None)  # the embedded engine: SD 1.5 and SDXL
        if needs.family is not None and engine_families is not None and needs.family not in engine_families:
            return Verdict(self.name, f"its {self.backend.name} engine does not run {needs.family} models (it runs "
                                      f"{', '.join(engine_families)})")
        return judge(self.name, self.profile, self.caps, needs, can_copy=self.ssh is not None,
                     local_models=local_models, ssh_hint=hint)

    # -- speed and load
    @property
    def speed(self) -> float:
        return self.seconds_per_step if self.seconds_per_step is not None else self.prior_speed

    def cost(self, needs: Needs) -> float:
        """Estimated seconds to run a job here, once free."""
        switch = 0.0 if needs.checkpoint is not None and needs.checkpoint == self.loaded_checkpoint \
            else CHECKPOINT_SWITCH_SECONDS
        return needs.steps * self.speed + switch

    def busy_for(self, now: float | None = None) -> float:
        """Estimated seconds until its running job ends (0 when idle)."""
        if self.running is None:
            return 0.0
        now = time.monotonic() if now is None else now
        if self._step is not None:
            step, total, when = self._step
            left = (total - step) * self.speed - (now - when)
        else:
            left = self._run_started + self._run_cost - now
        # Overdue (a stalled or slower-than-measured server): it looks busier the longer it is overdue.
        return abs(left)

    def started(self, job_id: str, needs: Needs) -> None:
        self.running = job_id
        self._run_started = time.monotonic()
        self._run_cost = self.cost(needs)
        self._step = None

    def ended(self, needs: Needs, succeeded: bool) -> None:
        self.running = None
        self._step = None
        if succeeded:
            self.jobs_run += 1
            self.loaded_checkpoint = needs.checkpoint

    def observe(self, step: int, total: int) -> None:
        """A progress report of its running job: the time since the previous step is one step's time."""
        now = time.monotonic()
        last = self._step
        self._step = (step, total, now)
        if last is None or total != last[1] or step <= last[0]:
            return
        per_step = (now - last[2]) / (step - last[0])
        old = self.seconds_per_step
        self.seconds_per_step = per_step if old is None else (1 - EMA) * old + EMA * per_step
