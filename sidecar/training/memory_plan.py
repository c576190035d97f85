"""GPU memory guidance per trainer, family and card size: what the run's plan (`--estimate`) shows, the least
memory a rented offer must have, and (for kohya's Flux) how many blocks to swap.

From the trainers' own documents: sd-scripts docs/flux_train_network.md "VRAM Usage Optimization" (with
`--fp8_base`: 24 GB basic settings; 16 GB batch 1 and `--blocks_to_swap`, its example 18; 12 GB and less also
8-bit AdamW, which needs bitsandbytes: the instances do not install it, so refused here); ai-toolkit's Flux
example `train_lora_flux_24gb.yaml` (quantized 8-bit base on 24 GB; it documents nothing smaller). SD 1.5 and
SDXL use the sizes of this project's profiles (SDXL: fp16, gradient checkpointing, cached latents and text
encoder outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = (8, 12, 16, 24, 48, 80)  # GB of the cards the plan speaks of
KOHYA_FLUX_SWAP_GB = 16  # the documented 16 GB row: fp8 base and block swap


@dataclass(frozen=True)
class Advice:
    gpu_memory_gb: int
    fits: bool
    how: str


def min_memory_gb(trainer: str, family: str) -> float:
    """The least GPU memory a run may rent (vast's minGpuMemoryGb is raised to it)."""
    if family == "flux":
        return 24 if trainer == "ai-toolkit" else KOHYA_FLUX_SWAP_GB
    return 16 if family == "sdxl" else 8


def advice(trainer: str, family: str, gb: float) -> Advice:
    size = int(gb)
    need = min_memory_gb(trainer, family)
    if gb < need:
        why = ("ai-toolkit's Flux config is made for 24 GB (quantized base); nothing smaller is documented"
               if family == "flux" and trainer == "ai-toolkit" else
               "below 16 GB Flux also needs 8-bit AdamW (bitsandbytes), which is not installed" if family == "flux"
               else f"{family} is planned from {need:g} GB")
        return Advice(size, False, f"refused: {why}")
    if family == "flux" and trainer == "ai-toolkit":
        return Advice(size, True, "fits with the 8-bit quantized base (model.quantize), bf16, gradient checkpointing")
    if family == "flux":
        if gb < 24:
            return Advice(size, True, "fits with --fp8_base and --blocks_to_swap=18 (slower), batch 1")
        return Advice(size, True, "fits with --fp8_base, cached text encoder outputs, gradient checkpointing")
    if family == "sdxl":
        return Advice(size, True, "fits with fp16, gradient checkpointing, cached latents and text encoder outputs")
    return Advice(size, True, "fits (SD 1.5 at 512 px)")


def table(trainer: str, family: str) -> list[Advice]:
    return [advice(trainer, family, gb) for gb in SIZES]
