"""The `[remote.vast]` and `[remote.ssh]` tables of the configuration: where and under which limits a
LoRA run may train away from this machine. Plain pydantic models, imported by `sidecar.config` (the one
settings model holds them as its `remote` field); a request's `remote` object overrides them key by key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

# kohya-ss/sd-scripts as installed and recorded in shared/kohya-sd-scripts.md §2.
KOHYA_REPO = "https://github.com/kohya-ss/sd-scripts.git"
KOHYA_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
# ostris/ai-toolkit as read for its adapter (sidecar/training/ai_toolkit.py).
AI_TOOLKIT_REPO = "https://github.com/ostris/ai-toolkit.git"
AI_TOOLKIT_COMMIT = "27a03a91f23eb1b757d5ec2e80ee3e129cfcc350"
VAST_SERVER = "https://console.vast.ai"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class VastSettings(_Table):
    """`[remote.vast]`: renting a GPU on vast.ai."""

    api_key: SecretStr | None = Field(
        None, description="vast.ai API key [default: the VAST_API_KEY environment variable]; never logged or "
                          "answered")
    server_url: str = Field(VAST_SERVER, description="vast.ai API server (the SDK's server URL option)")
    max_price_per_hour: float = Field(0.6, gt=0, le=100, description="most $/hour an offer may cost (dph_total)")
    max_total_cost: float = Field(3.0, gt=0, le=10_000,
                                  description="the run is stopped (last checkpoint pulled) when its cost reaches this")
    max_hours: float = Field(2.0, gt=0, le=720,
                             description="the run is stopped (last checkpoint pulled) after this many hours rented")
    min_gpu_memory_gb: float = Field(16, gt=0, le=1024, description="least GPU memory of an offer, GB")
    min_cuda_version: float = Field(12.1, ge=0, le=99, description="least CUDA version the offer's driver runs")
    min_reliability: float = Field(0.98, ge=0, le=1, description="least host reliability (0-1) of an offer")
    min_disk_gb: float = Field(40, gt=0, le=10_000, description="disk to rent with the instance, GB")
    image: str = Field("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
                       description="docker image of the instance: PyTorch with CUDA")
    kohya_commit: str = Field(KOHYA_COMMIT, pattern=r"^[0-9a-f]{7,40}$",
                              description="the sd-scripts commit the instance's onstart script installs")
    identity_file: Path = Field(Path("~/.ssh/id_ed25519"),
                                description="SSH private key; its .pub is attached to the instance")
    start_timeout: float = Field(1200, gt=0, description="seconds an instance may take to run and install kohya")
    ai_toolkit_commit: str = Field(AI_TOOLKIT_COMMIT, pattern=r"^[0-9a-f]{7,40}$",
                                   description="the ostris ai-toolkit commit the onstart script installs (trainer "
                                               "ai-toolkit)")


class SshSettings(_Table):
    """`[remote.ssh]`: a machine the artist already has, reached over SSH, with kohya installed."""

    host: str | None = Field(None, description="user@host of the machine")
    port: int = Field(22, ge=1, le=65535, description="its SSH port")
    identity_file: Path | None = Field(None, description="SSH private key [default: ssh-agent and ~/.ssh keys]")
    known_hosts: Path | None = Field(None, description="known_hosts file checked for the host's key [default: "
                                                       "~/.ssh/known_hosts]")
    kohya_dir: str = Field("~/kohya_ss/sd-scripts", description="sd-scripts folder on the machine")
    python: str = Field("~/kohya_ss/venv/bin/python", description="python of kohya's venv on the machine")
    ai_toolkit_dir: str = Field("~/ai-toolkit", description="ostris ai-toolkit on the machine (trainer ai-toolkit)")
    ai_toolkit_python: str = Field("~/ai-toolkit/venv/bin/python", description="python of ai-toolkit's venv there")
    work_dir: str = Field("~/plasma-runs", description="folder on the machine for runs (datasets, logs, outputs)")
    device: str = Field("cuda", pattern=r"^(cuda|mps|cpu)$",
                        description="what the machine trains on: cuda (fp16 mixed precision), mps or cpu")


class RemoteSettings(_Table):
    vast: VastSettings = Field(default_factory=VastSettings, description="vast.ai")
    ssh: SshSettings = Field(default_factory=SshSettings, description="an SSH host")
    poll_interval: float = Field(3.0, gt=0, le=300,
                                 description="seconds between reads of the remote log and instance status")
    status_interval: float = Field(30.0, gt=0, le=3600,
                                   description="seconds between asking the provider about a training instance "
                                               "(its price and start: the cost guard uses the provider's clock)")
    stale_after: float = Field(120.0, gt=0, description="seconds without a working SSH connection before the "
                                                        "instance is asked whether it still runs")
