"""Which torch device the engine runs on and in which dtypes.

mps > cuda > cpu unless `settings.device` names one. The UNet (and text encoder, ControlNet) run fp16
on a GPU; the VAE always runs fp32, because the fp16 VAE gives black or washed-out images on MPS;
everything is fp32 on the CPU, where fp16 is slow and partly unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sidecar.errors import EngineUnavailable

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES_BY_NAME = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "mps" | "cuda" | "cpu"
    unet_dtype: torch.dtype  # also the text encoder's and ControlNet's
    vae_dtype: torch.dtype

    def dtypes(self, unet: torch.dtype | None = None) -> dict[str, str]:
        u = DTYPE_NAMES[unet or self.unet_dtype]
        return {"unet": u, "text_encoder": DTYPE_NAMES[self.unet_dtype], "vae": DTYPE_NAMES[self.vae_dtype]}

    def compute_dtype(self, requested: str | None) -> torch.dtype:
        """The UNet dtype for a ModelComputeDtype request. On the CPU everything stays fp32."""
        if self.device == "cpu" or requested in (None, "default"):
            return self.unet_dtype
        dtype = DTYPES_BY_NAME[requested]
        if dtype == torch.bfloat16 and self.device == "mps" and not _mps_bf16():
            return torch.float16
        return dtype


def _mps_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False


def available_devices() -> list[str]:
    found = []
    if torch.backends.mps.is_available():
        found.append("mps")
    if torch.cuda.is_available():
        found.append("cuda")
    return [*found, "cpu"]


def plan_device(setting: str) -> DevicePlan:
    devices = available_devices()
    if setting == "auto":
        device = devices[0]
    elif setting in devices:
        device = setting
    else:
        raise EngineUnavailable(
            f"The configured device {setting!r} is not available on this machine (available: "
            f"{', '.join(devices)}). Set device to 'auto' or one of those.",
            {"device": setting, "available": devices},
        )
    if device == "cpu":
        return DevicePlan(device, torch.float32, torch.float32)
    return DevicePlan(device, torch.float16, torch.float32)
