"""What the daemon keeps about a run's remote machine, persisted with the run after every change: enough
to re-attach after a dropped connection or a daemon restart (instance, SSH endpoint and host key, the
trainer's process group, how far the log was read, which checkpoints were pulled) and to account for the
money (price, when it was rented, what earlier instances of the run cost).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The life of a run's machine. `detached`: the daemon stopped while it trained; it is re-attached at the
# next start. `destroy_failed`: destroying did not go through; the reaper tries again at the next start.
# `failed`: the run ended before it had a machine (none rented, or the SSH host refused the login):
# nothing was left there; `message` says why.
# `serving`: a rented ComfyUI in the backends' routing (sidecar.backends.renting), between starting and destroying.
STATES = ("searching", "creating", "starting", "uploading", "training", "pulling", "serving", "destroying",
          "destroyed", "detached", "destroy_failed", "failed")
LIVE = frozenset({"creating", "starting", "uploading", "training", "pulling", "serving", "destroying", "detached",
                  "destroy_failed"})


@dataclass
class PulledFile:
    step: int
    path: str  # local
    size: int
    sha256: str
    state: str | None = None  # the local copy of its `-state` folder (for a resume)


@dataclass
class RemoteState:
    provider: str
    state: str = "searching"
    instance_id: str | None = None
    label: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    host_key: str | None = None  # pinned at the first connection
    gpu: str | None = None
    offer: str | None = None  # the chosen offer, described
    why: str | None = None  # why that offer
    price_per_hour: float = 0.0
    rented_at: float | None = None  # epoch seconds the current instance was created
    first_rented_at: float | None = None  # first instance of this attempt: the time limit counts from there
    spent_before: float = 0.0  # what the run's earlier instances cost
    guard_base: float = 0.0  # cost when this attempt (submit or resume) began: the guard counts from here
    max_total_cost: float | None = None
    max_hours: float | None = None
    work_dir: str | None = None  # the run's folder on the machine (absolute)
    pid: int | None = None  # the detached trainer's process group there
    # The step that trainer started from (its `--resume` point, 0 for a fresh start): its log's bar counts
    # the steps after it, so this is the offset of its counts, whoever reads the log (a re-attach too).
    start_step: int = 0
    log_offset: int = 0
    instances: int = 0  # how many instances the run has had
    instances_this_attempt: int = 0
    reattached: int = 0
    pulled: list[PulledFile] = field(default_factory=list)
    message: str | None = None
    # The run's [storage] bucket link (training/remote/bucket.py), kept so a re-attach after a daemon restart
    # still fetches checkpoints through the bucket: the store's URL, and the machine's python that runs the
    # agent (its credentials stay in the run's folder there until the run ends).
    bucket_url: str | None = None
    bucket_python: str | None = None
    bucket_endpoint: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE and self.instance_id is not None

    def cost(self, now: float | None = None) -> float:
        """Money spent so far: earlier instances plus the current one's price times its time."""
        now = time.time() if now is None else now
        current = 0.0
        if self.rented_at is not None:
            current = self.price_per_hour * max(0.0, now - self.rented_at) / 3600
        # Rounded past display precision only: a short run on a quiet machine still shows what it cost.
        return round(self.spent_before + current, 6)

    def attempt_cost(self, now: float | None = None) -> float:
        return round(self.cost(now) - self.guard_base, 6)

    def new_attempt(self) -> None:
        """A submit or a resume starts: the limits apply afresh; what was spent before stays in the total."""
        self.guard_base = self.cost()
        self.first_rented_at = None
        self.instances_this_attempt = 0

    def hours(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return 0.0 if self.first_rented_at is None else max(0.0, now - self.first_rented_at) / 3600

    def rented(self, instance_id: str, price: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.instance_id, self.price_per_hour, self.rented_at = instance_id, price, now
        self.first_rented_at = self.first_rented_at or now
        self.instances += 1
        self.instances_this_attempt += 1
        self.pid, self.log_offset, self.host_key, self.work_dir, self.start_step = None, 0, None, None, 0
        self.bucket_url = self.bucket_python = self.bucket_endpoint = None  # a new machine is linked afresh

    def billed(self, started_at: float | None, price: float | None) -> None:
        """The provider's own figures for the current instance: when billing started, the price."""
        if started_at and self.rented_at is not None:
            if self.first_rented_at == self.rented_at:
                self.first_rented_at = started_at
            self.rented_at = started_at
        if price:
            self.price_per_hour = price

    def released(self, now: float | None = None) -> None:
        """The instance is destroyed: its cost is final."""
        self.spent_before = self.cost(now)
        self.rented_at = None
        self.state = "destroyed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RemoteState | None:
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known and k != "pulled"})
        state.pulled = [PulledFile(**p) for p in data.get("pulled") or []]
        return state
