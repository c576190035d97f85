"""The `remote` object of `POST /loras/train` (and the estimate), and how a run's remote machine looks in
its status. camelCase on the wire, unknown fields refused, every key optional: what is left out comes
from the configuration's `[remote.vast]` / `[remote.ssh]` table.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.whole_numbers import WholeNumbers


class _Wire(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True,
                              allow_inf_nan=False, json_schema_serialization_defaults_required=True)


class VastRemote(_Wire):
    provider: Literal["vast"]
    max_price_per_hour: float | None = Field(None, gt=0, le=100, description="most $/hour an offer may cost")
    max_total_cost: float | None = Field(None, gt=0, le=10_000, description="stop the run (keeping its last "
                                                                            "checkpoint) when it has cost this, $")
    max_hours: float | None = Field(None, gt=0, le=720, description="stop the run after this many hours rented")
    min_gpu_memory_gb: float | None = Field(None, gt=0, le=1024, description="least GPU memory, GB")
    min_cuda_version: float | None = Field(None, ge=0, le=99, description="least CUDA version of the driver")
    min_reliability: float | None = Field(None, ge=0, le=1, description="least host reliability, 0-1")
    min_disk_gb: float | None = Field(None, gt=0, le=10_000, description="disk rented with the instance, GB")
    image: str | None = Field(None, min_length=1, max_length=300, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
                              description="docker image with PyTorch and CUDA")


class SshRemote(_Wire):
    provider: Literal["ssh"]
    host: str | None = Field(None, min_length=1, max_length=300, pattern=r"^([A-Za-z0-9._-]+@)?[A-Za-z0-9.:_-]+$",
                             description="user@host")
    port: int | None = Field(None, ge=1, le=65535)
    identity_file: str | None = Field(None, min_length=1, max_length=4096, description="SSH private key (a path "
                                                                                        "on this machine)")
    kohya_dir: str | None = Field(None, min_length=1, max_length=4096, description="sd-scripts on the machine")
    python: str | None = Field(None, min_length=1, max_length=4096, description="kohya venv's python there")
    ai_toolkit_dir: str | None = Field(None, min_length=1, max_length=4096, description="ai-toolkit on the machine")
    ai_toolkit_python: str | None = Field(None, min_length=1, max_length=4096,
                                          description="ai-toolkit venv's python there")
    work_dir: str | None = Field(None, min_length=1, max_length=4096, description="folder for runs there")
    device: Literal["cuda", "mps", "cpu"] | None = Field(None, description="what the machine trains on")


RemoteRequest = Annotated[VastRemote | SshRemote, Field(discriminator="provider")]


class RemoteStatus(_Wire):
    """A run's remote machine: where it trains, in which state, and what it has cost so far."""

    provider: str
    state: str = Field(description="searching, creating, starting, uploading, training, pulling, destroying, "
                                   "destroyed, detached (daemon stopped; re-attached at its next start), "
                                   "destroy_failed (the reaper retries at start), failed (the run ended before "
                                   "it had a machine, e.g. the SSH host refused the login; `message` says why)")
    instance: str | None = Field(None, description="the provider's instance id (ssh: the run folder)")
    host: str | None = Field(None, description="SSH host:port of the machine")
    gpu: str | None = None
    offer: str | None = Field(None, description="the offer chosen")
    why: str | None = Field(None, description="why that offer")
    price_per_hour: float
    cost_so_far: float = Field(description="$ spent by this run so far (every instance it had)")
    max_total_cost: float | None = None
    max_hours: float | None = None
    instances: int = Field(description="instances the run has had (more than 1 after a lost one)")
    reattached: int = Field(description="times the daemon re-attached to a running trainer")
    message: str | None = None


class OfferInfo(_Wire):
    id: str
    gpu: str
    gpu_memory_gb: float
    price_per_hour: float
    reliability: float | None = None
    cuda_version: float | None = None


class MemoryAdvice(_Wire):
    gpu_memory_gb: int
    fits: bool
    how: str = Field(description="the settings it trains with on such a card, or why it is refused")


class TrainEstimate(_Wire):
    """`POST /loras/estimate`: what a run would take here and there, and cost, before anything is rented."""

    steps: int
    provider: str | None = None
    seconds_per_step_here: float | None = Field(None, description="measured on this machine's last finished "
                                                                  "local run; null when none finished yet")
    hours_here: float | None = None
    seconds_per_step_there: float | None = Field(None, description="rough, from the offer GPU's TFLOPS")
    hours_there: float | None = None
    expected_cost: float | None = Field(None, description="$ for the run there (price times hours, plus the "
                                                          "set-up allowance)")
    offer: OfferInfo | None = None
    why: str | None = None
    offers_considered: int = 0
    trainer: str | None = None
    family: str | None = None
    memory: list[MemoryAdvice] = Field(default_factory=list, description="GPU memory guidance for the run's "
                                                                         "trainer and family, per card size")
    limits: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
