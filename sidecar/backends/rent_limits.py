"""What a rented ComfyUI may cost and how long it may take: the limits of its table over `[remote.vast]`'s,
the guard's test (cost and time so far against them), the start deadline, and the image's ComfyUI flags.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sidecar.config import Settings
from sidecar.config.backends import BackendSpec
from sidecar.remote.state import RemoteState

if TYPE_CHECKING:
    from sidecar.remote.provider import Limits


class RentFailed(Exception):
    """Renting stopped before the backend joined; the message says why (the instance is destroyed)."""


def limits_for(settings: Settings, spec: BackendSpec) -> Limits:
    from sidecar.remote.provider import Limits  # with asyncssh: not at the daemon's start

    vast = settings.remote.vast
    return Limits(max_price_per_hour=spec.max_price_per_hour or vast.max_price_per_hour,
                  max_total_cost=spec.max_total_cost or vast.max_total_cost,
                  max_hours=spec.max_hours or vast.max_hours, min_gpu_memory_gb=spec.min_gpu_memory_gb,
                  min_cuda_version=vast.min_cuda_version, min_reliability=vast.min_reliability,
                  min_disk_gb=spec.disk_gb, gpu_name=spec.gpu)


def comfy_env(spec: BackendSpec) -> dict[str, str]:
    """ComfyUI's flags in the image: its port, and no `--listen`, so it answers on the container's loopback
    only (the tunnel's end)."""
    return {"COMFYUI_ARGS": f"--disable-auto-launch --port {spec.instance_port}"}


def limit_hit(st: RemoteState) -> str | None:
    if st.max_total_cost is not None and st.cost() >= st.max_total_cost:
        return f"its cost reached ${st.cost():.4f} of its ${st.max_total_cost:g} limit (max_total_cost)"
    if st.max_hours is not None and st.hours() >= st.max_hours:
        return f"it has been rented {st.hours():.2f} h of its {st.max_hours:g} h limit (max_hours)"
    return None


def in_time(spec: BackendSpec, deadline: float, why: str) -> None:
    if time.monotonic() > deadline:
        raise RentFailed(f"not answering within its start_timeout of {spec.start_timeout:g} s: {why}")
