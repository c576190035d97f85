"""One `[[backends]]` table of the configuration, typed: where a generation backend is and what it may do.

```toml
[[backends]]
name = "desk"
kind = "comfyui"                        # "embedded" | "comfyui" (url: attached; dir + python: managed)
url = "http://192.168.1.20:8188"
profile = "cuda-24gb"
tags = ["pool", "fast"]
ssh = "artist@192.168.1.20:~/ComfyUI"   # optional: where its models/ live, for copying files there

[[backends]]
name = "rented"
kind = "vast"                           # rented on vast.ai by `sidecar backends rent rented`, destroyed when idle
max_price_per_hour = 0.5
max_total_cost = 5.0
idle_minutes = 15
```

A leaf (pydantic and the profile table only): `sidecar.config` holds a list of these. Which backends
are "local" (the laptop's own device, under its one lock) is decided here too: the embedded engine, a
managed ComfyUI, and an attached ComfyUI on a loopback address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sidecar.hosts import is_loopback
from sidecar.profiles import known_profile

# vast.ai's own ComfyUI image (github.com/vast-ai/base-image, derivatives/pytorch/derivatives/comfyui), tagged
# `<ComfyUI ref>-cuda-<cuda>-<python>` by its build workflow: ComfyUI v0.3.64 is the version whose protocol
# the daemon's client was recorded against. Its ComfyUI listens on the container's loopback at 18188 (the
# public 8188 is its authenticating proxy, which no rental of ours maps); we reach 18188 through SSH only.
VAST_COMFY_IMAGE = "vastai/comfyui:v0.3.64-cuda-12.9-py312"
VAST_COMFY_DIR = "/workspace/ComfyUI"
VAST_COMFY_PORT = 18188
VAST_COMFY_PYTHON = "/venv/main/bin/python"  # the image's venv (its supervisor script activates /venv/main)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Words `where` gives a meaning of its own: a backend or tag of that name would be ambiguous.
RESERVED = ("local", "any")
SSH_TARGET = re.compile(r"(?:(?P<user>[^@\s:/]+)@)?(?P<host>\[[0-9a-fA-F:]+\]|[^@\s:/\[\]]+)(?::(?P<port>\d+))?"
                        r":(?P<path>\S+)")


@dataclass(frozen=True)
class SshTarget:
    """`user@host[:port]:path`: `path` is the ComfyUI folder whose `models/` receives copied files."""

    user: str | None
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{user}{self.host}{port}:{self.path}"


def parse_ssh_target(text: str) -> SshTarget:
    match = SSH_TARGET.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an SSH target; give user@host:path (e.g. artist@192.168.1.20:~/ComfyUI) "
                         "or user@host:port:path")
    port = int(match["port"]) if match["port"] else 22
    if not 1 <= port <= 65535:
        raise ValueError(f"SSH port {port} is out of range")
    return SshTarget(match["user"], match["host"].strip("[]"), port, match["path"])


class BackendSpec(BaseModel):
    """One generation backend. `kind = "comfyui"` with `url` attaches to a running ComfyUI; with `dir`
    and `python` the daemon starts and supervises it (managed, on `port`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="unique lowercase name, used by `where` and shown in /health and job records")
    kind: Literal["embedded", "comfyui", "vast"] = Field(
        description="embedded diffusers engine, a ComfyUI server, or a ComfyUI rented on vast.ai (vast)")
    url: str | None = Field(None, description="attached ComfyUI's base URL")
    dir: Path | None = Field(None, description="managed ComfyUI: its install folder")
    python: Path | None = Field(None, description="managed ComfyUI: its venv's python; vast: the image's python, "
                                                  "which fetches LoRAs from the [storage] bucket [default: "
                                                  f"{VAST_COMFY_PYTHON}]")
    port: int = Field(8188, ge=1, le=65535, description="managed ComfyUI: its port")
    profile: str = Field("m1pro-16gb", description="hardware profile of that machine (resolution, batch limits)")
    tags: tuple[str, ...] = Field((), description="labels `where` can name (\"pool\", \"fast\", \"draft\")")
    ssh: str | None = Field(None, description="user@host[:port]:path of the ComfyUI folder on that machine, for "
                                              "copying LoRAs and checkpoints it lacks (SFTP)")
    ssh_key: Path | None = Field(None, description="private key for `ssh` [default: the SSH agent and ~/.ssh keys]")
    ssh_known_hosts: Path | None = Field(None, description="known_hosts file for `ssh` [default: ~/.ssh/known_hosts]")
    local: bool | None = Field(None, description="runs on this machine's device [default: embedded, managed, or a "
                                              "loopback url]; false for a remote GPU reached through an SSH tunnel")
    # kind = "vast": what to rent and the guards that destroy it ([remote.vast] gives the API key, the SSH key
    # and the defaults of the limits not set here).
    gpu: str | None = Field(None, description="vast: the GPU model to rent, as vast.ai names it (\"RTX 4090\") "
                                              "[default: any that fits the limits]")
    max_price_per_hour: float | None = Field(None, gt=0, le=100, description="vast: most $/hour an offer may cost "
                                                                            "[default: [remote.vast]'s]")
    max_total_cost: float | None = Field(None, gt=0, le=10_000, description="vast: destroyed when its cost reaches "
                                                                           "this, $ [default: [remote.vast]'s]")
    max_hours: float | None = Field(None, gt=0, le=720, description="vast: destroyed after this many hours rented "
                                                                   "[default: [remote.vast]'s]")
    idle_minutes: float = Field(15.0, gt=0, le=24 * 60, description="vast: destroyed after this many minutes "
                                                                    "without a job")
    min_gpu_memory_gb: float = Field(24, gt=0, le=1024, description="vast: least GPU memory of an offer, GB")
    disk_gb: float = Field(40, gt=0, le=10_000, description="vast: disk rented with the instance, GB")
    image: str = Field(VAST_COMFY_IMAGE, description="vast: docker image with ComfyUI (vast.ai's own, pinned)")
    comfyui_dir: str = Field(VAST_COMFY_DIR, description="vast: the ComfyUI folder in the image (models/ go there)")
    instance_port: int = Field(VAST_COMFY_PORT, ge=1, le=65535,
                               description="vast: ComfyUI's port inside the instance, reached through the tunnel")
    start_timeout: float = Field(900, gt=0, description="vast: seconds from renting until ComfyUI answers; past "
                                                        "it the instance is destroyed")
    rent: Literal["manual", "on-demand"] = Field(
        "manual", description="vast: `manual` (rented only by `sidecar backends rent NAME`) or `on-demand` (the "
                              "daemon rents it, under this table's limits, when a job that no backend in the pool "
                              "runs could run there and its `where` names this table, one of its tags, or `any`)")

    @model_validator(mode="before")
    @classmethod
    def _rented_profile(cls, data: object) -> object:
        """A rented GPU is a 24 GB CUDA card unless the table says otherwise."""
        if isinstance(data, dict) and data.get("kind") == "vast" and data.get("profile") is None:
            return {**data, "profile": "cuda-24gb"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError(f"backend name {v!r}: 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit")
        if v in RESERVED:
            raise ValueError(f"backend name {v!r} is reserved (`where = \"{v}\"` has its own meaning)")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for tag in v:
            if not NAME.fullmatch(tag) or tag in RESERVED:
                raise ValueError(f"tag {tag!r}: 1-32 of a-z, 0-9, '-', '_' and not {' or '.join(RESERVED)}")
        return tuple(dict.fromkeys(v))

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        return known_profile(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")) or not urlsplit(v).hostname:
            raise ValueError(f"url must be http(s)://host[:port], got {v!r}")
        return v.rstrip("/")

    @field_validator("ssh")
    @classmethod
    def _ssh(cls, v: str | None) -> str | None:
        if v is not None:
            parse_ssh_target(v)
        return v

    @field_validator("dir", "python", "ssh_key", "ssh_known_hosts", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @model_validator(mode="after")
    def _coherent(self) -> BackendSpec:
        if self.kind == "embedded" and (self.url or self.dir or self.local is False):
            raise ValueError(f"backend {self.name!r}: kind \"embedded\" runs in the daemon; it takes no url or dir")
        if self.kind == "comfyui":
            if bool(self.url) == bool(self.dir):
                raise ValueError(f"backend {self.name!r}: kind \"comfyui\" needs url (attached) or dir + python "
                                 "(managed), not both")
            if self.managed and self.local is False:
                raise ValueError(f"backend {self.name!r}: a managed ComfyUI runs on this machine (local)")
            if self.dir and not self.python:
                raise ValueError(f"backend {self.name!r}: a managed ComfyUI (dir) needs python, its venv's python")
        if self.kind == "vast" and (self.url or self.dir or self.ssh or self.local):
            raise ValueError(f"backend {self.name!r}: kind \"vast\" is rented; the daemon finds its address, "
                             "tunnel and SSH target itself (no url, dir, ssh or local)")
        if self.kind != "vast":
            rented_only = sorted(f for f in RENTED_ONLY if f in self.model_fields_set)
            if rented_only:
                raise ValueError(f"backend {self.name!r}: {', '.join(rented_only)} only apply to kind \"vast\"")
        return self

    @property
    def rented(self) -> bool:
        return self.kind == "vast"

    @property
    def managed(self) -> bool:
        return self.kind == "comfyui" and self.dir is not None

    @property
    def is_local(self) -> bool:
        """Runs on this machine's device (shares its lock with training)."""
        if self.local is not None:
            return self.local
        if self.kind == "vast":
            return False
        if self.kind == "embedded" or self.managed:
            return True
        return is_loopback(urlsplit(self.url or "").hostname or "")

    @property
    def ssh_target(self) -> SshTarget | None:
        return parse_ssh_target(self.ssh) if self.ssh else None


RENTED_ONLY = ("gpu", "max_price_per_hour", "max_total_cost", "max_hours", "idle_minutes", "min_gpu_memory_gb",
               "disk_gb", "image", "comfyui_dir", "instance_port", "start_timeout", "rent")


def check_tables(specs: list[BackendSpec]) -> None:
    """What no single table can see: unique names, one embedded engine, one managed ComfyUI per port,
    and names that are not also tags (`where` would be ambiguous)."""
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"the name {name!r} is used twice")
    if sum(s.kind == "embedded" for s in specs) > 1:
        raise ValueError("at most one embedded engine (it is this machine's own device)")
    ports = [s.port for s in specs if s.managed]
    for port in ports:
        if ports.count(port) > 1:
            raise ValueError(f"two managed ComfyUIs on port {port}")
    tags = {t for s in specs for t in s.tags}
    clash = sorted(tags & set(names))
    if clash:
        raise ValueError(f"{clash[0]!r} is both a backend name and a tag")
