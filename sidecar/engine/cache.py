"""The warm model cache: one base model on the device between jobs, LoRAs swapped in place, the last
ControlNet kept.

A different checkpoint (or UNet dtype) replaces the base; a different LoRA set only restores the
patched weights and merges the new set. A changed file on disk (mtime/size) counts as a new model.
Used from the engine's single worker thread only.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sidecar.engine import models
from sidecar.engine.device import DTYPE_NAMES, DevicePlan
from sidecar.engine.lora import TE1_PREFIX, TE2_PREFIX, TE_PREFIX, UNET_PREFIX, Patcher, sdxl_unet_names
from sidecar.errors import JobFailed

log = logging.getLogger("sidecar.engine")


@dataclass(frozen=True)
class LoraUse:
    path: Path
    strength_model: float
    strength_clip: float


@dataclass
class Base:
    key: tuple
    name: str
    components: models.Components
    unet_dtype: torch.dtype
    unet_patch: Patcher
    te_patch: Patcher
    te2_patch: Patcher | None = None  # SDXL's second text encoder
    loras: tuple = ()  # the (stamp, strength_model, strength_clip) set merged now
    lora_names: list[str] = field(default_factory=list)


class ModelCache:
    def __init__(self, plan: DevicePlan, places: models.TokenizerPlaces):
        self.plan = plan
        self.places = places
        self.base: Base | None = None
        self._controlnet: tuple[tuple, str, torch.nn.Module] | None = None
        self.loads = 0  # base model loads, for tests and /health: warm jobs must not add to it

    def get_base(self, checkpoint: Path, unet_dtype: torch.dtype, loras: list[LoraUse]) -> Base:
        key = (models.stamp(checkpoint), unet_dtype)
        if self.base is None or self.base.key != key:
            self.unload()
            log.info("loading checkpoint %s (%s, UNet %s)", checkpoint.name, self.plan.device, DTYPE_NAMES[unet_dtype])
            device = self.plan.device
            # On the CPU every part runs in fp32 (`device.py`): read the file straight into it, so an fp16 file
            # and its fp32 copy are never both in memory.
            same = device == "cpu" and unet_dtype == self.plan.unet_dtype == self.plan.vae_dtype
            parts = models.load_checkpoint(checkpoint, self.places, unet_dtype if same else None)
            _to(parts.unet, device, unet_dtype)
            _to(parts.text_encoder, device, self.plan.unet_dtype)
            _to(parts.vae, device, self.plan.vae_dtype)
            if parts.text_encoder_2 is not None:
                _to(parts.text_encoder_2, device, self.plan.unet_dtype)
            self.base = _base(key, checkpoint.name, parts, unet_dtype)
            self.loads += 1
        self._set_loras(self.base, loras)
        return self.base

    def _set_loras(self, base: Base, loras: list[LoraUse]) -> None:
        # Strength 0 is "no LoRA" exactly: such entries are never merged.
        wanted = tuple((models.stamp(u.path), u.strength_model, u.strength_clip) for u in loras
                       if u.strength_model or u.strength_clip)
        if wanted == base.loras:
            return
        _restore(base)
        base.loras, base.lora_names = (), []
        try:
            for use in loras:
                if use.strength_model or use.strength_clip:
                    self._merge(base, use)
        except BaseException:
            # Never leave a half-merged set behind: the next job would inherit it unannounced.
            _restore(base)
            base.lora_names = []
            raise
        base.loras = wanted

    @staticmethod
    def _merge(base: Base, use: LoraUse) -> None:
        try:
            tensors, _ = models.read_lora(use.path)
        except Exception as exc:  # safetensors raises its own error types
            raise JobFailed(f"Cannot read LoRA {use.path.name}: {exc}", {"lora": use.path.name},
                            code="model_load_failed") from None
        applied = skipped = 0
        patchers = [(base.unet_patch, use.strength_model), (base.te_patch, use.strength_clip)]
        if base.te2_patch is not None:
            patchers.append((base.te2_patch, use.strength_clip))
        for patcher, strength in patchers:
            if strength:
                try:
                    a, s = patcher.apply(tensors, strength)
                except ValueError as exc:  # the caller restores what was merged before
                    raise JobFailed(f"LoRA {use.path.name} does not fit this checkpoint: {exc}.",
                                    {"lora": use.path.name}, code="lora_incompatible") from None
                applied, skipped = applied + a, skipped + s
        if applied == 0:
            family = "SDXL" if base.components.family == "sdxl" else "SD1.5"
            raise JobFailed(
                f"LoRA {use.path.name} has no layer this checkpoint has ({skipped} LoRA module(s) matched "
                f"nothing): it is not a kohya-format {family} LoRA for this model.",
                {"lora": use.path.name, "unmatched": skipped}, code="lora_incompatible")
        if skipped:
            log.warning("LoRA %s: %d module(s) matched no layer of %s and were skipped",
                        use.path.name, skipped, base.name)
        base.lora_names.append(use.path.name)

    def controlnet(self, path: Path, dtype: torch.dtype) -> torch.nn.Module:
        key = (models.stamp(path), dtype)
        if self._controlnet is None or self._controlnet[0] != key:
            self._controlnet = None
            gc.collect()
            log.info("loading ControlNet %s", path.name)
            model = _to(models.load_controlnet(path), self.plan.device, dtype)
            self._controlnet = (key, path.name, model)
        return self._controlnet[2]

    def unload(self) -> None:
        """Give the device memory back (a new checkpoint, or training wants the device)."""
        self.base = None
        self._controlnet = None
        gc.collect()
        if self.plan.device == "cuda":
            torch.cuda.empty_cache()
        elif self.plan.device == "mps":
            torch.mps.empty_cache()

    def loaded(self) -> dict[str, Any]:
        base = self.base
        return {
            "checkpoint": base.name if base else None,
            "loras": list(base.lora_names) if base else [],
            "controlnet": self._controlnet[1] if self._controlnet else None,
            "unetDtype": DTYPE_NAMES[base.unet_dtype] if base else None,
            "baseLoads": self.loads,
        }


def _base(key: tuple, name: str, parts: models.Components, unet_dtype: torch.dtype) -> Base:
    """The patchers by family: SDXL's LoRAs name `lora_te1_`/`lora_te2_` and the SGM UNet (`sidecar.engine.lora`)."""
    if parts.family == "sdxl":
        return Base(key, name, parts, unet_dtype, Patcher(parts.unet, UNET_PREFIX, namer=sdxl_unet_names),
                    Patcher(parts.text_encoder, TE1_PREFIX), Patcher(parts.text_encoder_2, TE2_PREFIX))
    return Base(key, name, parts, unet_dtype, Patcher(parts.unet, UNET_PREFIX), Patcher(parts.text_encoder, TE_PREFIX))


def _restore(base: Base) -> None:
    for patcher in (base.unet_patch, base.te_patch, base.te2_patch):
        if patcher is not None:
            patcher.restore()


def _to(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    # torch's own .to: diffusers' override warns about fp32-pinned modules SD1.5 does not have.
    return torch.nn.Module.to(model, device=device, dtype=dtype)
