"""kohya-format LoRA files merged into (and taken back out of) a loaded model's weights.

Merging costs nothing per step, as ComfyUI's weight patching; the weights a LoRA touches are backed
up first (on the CPU) and restored exactly before the next LoRA goes in, so swapping LoRAs never
reloads the base model and never drifts. Key names are kohya's: `lora_unet_<diffusers module path
with _>` and `lora_te_<transformers v4 CLIP module path with _>`, each `.lora_down.weight`,
`.lora_up.weight` and an optional `.alpha` (scale alpha/rank, rank = rows of lora_down).

SDXL LoRAs (sd-scripts' networks/lora.py on its SDXL models) name the text encoders `lora_te1_`
(CLIP-L) and `lora_te2_` (OpenCLIP bigG, transformers names), and the UNet by the original SGM
module tree (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), since sd-scripts trains
SDXL on that UNet; diffusers-named ones (`lora_unet_down_blocks_...`) are matched too, as ComfyUI's
comfy/lora.py maps both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("sidecar.engine")

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
TE1_PREFIX, TE2_PREFIX = "lora_te1_", "lora_te2_"  # SDXL's two text encoders
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def kohya_names(model: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Module]:
    """kohya name -> module, for every Linear/Conv2d a LoRA may target."""
    names: dict[str, torch.nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            if prefix.startswith("lora_te") and not path.startswith("text_model."):
                path = "text_model." + path  # transformers 5 flattened CLIPTextModel; kohya names the v4 paths
            names[prefix + path.replace(".", "_")] = module
    return names


def sdxl_unet_names(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """kohya name -> module for an SDXL UNet: the SGM names sd-scripts writes, and the diffusers ones."""
    from sidecar.engine.convert_sdxl import unet_module_names

    names = kohya_names(unet, UNET_PREFIX)
    modules = dict(unet.named_modules())
    for path, sgm in unet_module_names(unet, dict(unet.config)).items():
        names[UNET_PREFIX + sgm.replace(".", "_")] = modules[path]
    return names


def lora_modules(tensors: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return sorted({k[: -len(DOWN)] for k in tensors if k.startswith(prefix) and k.endswith(DOWN)})


def delta_weight(tensors: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """The module's weight delta. ValueError naming the module when the LoRA's tensors cannot be one for a
    weight of `shape` (a LoRA for another model, or a file that lies): checked before any product is formed."""
    down = tensors[name + DOWN].float()
    up = tensors[name + UP].float()
    if down.dim() < 2 or up.dim() < 2 or down.shape[0] == 0:
        raise ValueError(f"{name}: lora_down/lora_up are not matrices")
    rank = down.shape[0]
    if up.shape[0] != shape[0] or up.flatten(1).shape[1] != rank or down.flatten(1).shape[1] != math.prod(shape[1:]):
        raise ValueError(f"{name}: lora_up {tuple(up.shape)} x lora_down {tuple(down.shape)} is not a delta for "
                         f"a weight of {tuple(shape)}")
    given = tensors.get(name + ALPHA)
    if given is not None and (given.numel() != 1 or not math.isfinite(float(given))):
        raise ValueError(f"{name}: its alpha is not one finite number")
    alpha = float(given) if given is not None else float(rank)
    # up is (out, rank[, 1, 1]) so one matmul covers linear, 1x1 and kxk convolutions alike.
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * (alpha / rank)


@dataclass
class Patcher:
    """Owns the LoRA deltas merged into one model and the original weights they replaced."""

    model: torch.nn.Module
    prefix: str
    namer: Callable[[torch.nn.Module], dict[str, torch.nn.Module]] | None = None  # SDXL UNet: `sdxl_unet_names`
    _names: dict[str, torch.nn.Module] | None = None
    _originals: dict[str, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)

    @property
    def names(self) -> dict[str, torch.nn.Module]:
        if self._names is None:
            self._names = self.namer(self.model) if self.namer else kohya_names(self.model, self.prefix)
        return self._names

    @torch.no_grad()
    def apply(self, tensors: dict[str, torch.Tensor], strength: float) -> tuple[int, int]:
        """Merge one LoRA at `strength`; returns (modules applied, modules this model lacks)."""
        applied = skipped = 0
        for name in lora_modules(tensors, self.prefix):
            module = self.names.get(name)
            if module is None or name + UP not in tensors:
                skipped += 1
                continue
            weight = module.weight
            if name not in self._originals:
                self._originals[name] = (module, weight.detach().to("cpu", copy=True))
            delta = delta_weight(tensors, name, weight.shape).to(weight.device)
            # Add in fp32 and round once, as the fp16 weights cannot hold a small delta exactly.
            weight.copy_((weight.float() + strength * delta).to(weight.dtype))
            applied += 1
        return applied, skipped

    @torch.no_grad()
    def restore(self) -> None:
        for module, original in self._originals.values():
            module.weight.copy_(original.to(module.weight.device, module.weight.dtype))
        self._originals.clear()

    @property
    def patched(self) -> bool:
        return bool(self._originals)
