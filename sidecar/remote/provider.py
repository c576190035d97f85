"""The one small interface a place to train implements: find offers, create an instance (labelled with
the run), ask its status, destroy it, list the instances it holds, and open a shell on it. The run logic
(`trainer.py`), the estimate and the reaper only talk to this; vast.ai (`vast.py`) and a plain SSH host
(`ssh.py`) are its two implementations, and another provider (RunPod...) is a third file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sidecar.remote.shell import Shell

LABEL_PREFIX = "plasma-sidecar-run-"  # instance label = prefix + run id: how the reaper finds our instances


def label_for(run_id: str) -> str:
    return LABEL_PREFIX + run_id


def run_of(label: str | None) -> str | None:
    """The run id an instance's label names, or None for an instance that is not one of ours."""
    if not label or not label.startswith(LABEL_PREFIX):
        return None
    return label[len(LABEL_PREFIX):] or None


@dataclass(frozen=True)
class Limits:
    """What a rented machine must be and may cost (the request's `remote` over the configuration's)."""

    max_price_per_hour: float
    max_total_cost: float
    max_hours: float
    min_gpu_memory_gb: float = 0
    min_cuda_version: float = 0
    min_reliability: float = 0
    min_disk_gb: float = 0
    gpu_name: str | None = None  # one GPU model only (vast.ai's name for it)


@dataclass(frozen=True)
class Offer:
    id: str
    gpu_name: str
    num_gpus: int
    gpu_memory_gb: float
    price_per_hour: float  # everything included (vast: dph_total)
    reliability: float | None = None
    cuda_version: float | None = None
    total_tflops: float | None = None
    disk_gb: float | None = None
    where: str | None = None

    def describe(self) -> str:
        gpus = f"{self.num_gpus}x " if self.num_gpus > 1 else ""
        rel = f", reliability {self.reliability:.3f}" if self.reliability is not None else ""
        return f"{gpus}{self.gpu_name} {self.gpu_memory_gb:.0f} GB at ${self.price_per_hour:.3f}/h{rel}"


@dataclass
class Instance:
    """A machine a run trains on, as the provider reports it."""

    id: str
    state: str  # provider's word; `running` is the one a run can use, `gone` when it no longer exists
    label: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str = "root"
    price_per_hour: float = 0.0
    gpu_name: str | None = None
    message: str | None = None  # the provider's status message (an error while loading, ...)
    started_at: float | None = None  # epoch seconds billing started, by the provider's clock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Provider(Protocol):
    name: str

    async def search(self, limits: Limits) -> list[Offer]:
        """Offers that pass the limits' filters, best first (the chooser still checks every limit)."""

    async def create(self, offer: Offer, label: str, onstart: str | None, *, image: str | None = None,
                     env: dict[str, str] | None = None, disk_gb: float | None = None) -> Instance:
        """Rent `offer`, labelled; the instance starts loading (not running yet). `image`/`env`/`disk_gb`:
        another image than the provider's training one (a rented ComfyUI)."""

    async def status(self, instance_id: str) -> Instance:
        """The instance now; state `gone` when the provider no longer has it."""

    async def destroy(self, instance_id: str) -> None:
        """Stop paying for it: the instance and its disk are gone afterwards (idempotent)."""

    async def list_instances(self) -> list[Instance]:
        """Every instance the account holds (the reaper keeps those labelled with our runs)."""

    async def shell(self, instance: Instance, host_key: str | None) -> Shell:
        """A shell (commands + SFTP) on a running instance; `host_key` pins the key seen first."""
