"""LoRA files in kohya's format, so ComfyUI, kohya's tools and diffusers load what we train.

Key names are kohya's for SD1.x (`shared/kohya-sd-scripts.md` §4): `lora_unet_<diffusers module path
with _>` and `lora_te_<text model path with _>`, each with `.lora_down.weight`, `.lora_up.weight`
and a scalar `.alpha`; metadata is kohya's `ss_*` / `modelspec.*` keys, all strings. This module
turns peft LoRA layers into that and back; it does not train.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save, save_file

from sidecar.atomic import replacing
from sidecar.training.dataset import Dataset
from sidecar.training.spec import TrainSpec

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"
ADAPTER = "default"


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def lora_modules(model: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Module]:
    """kohya name -> peft LoRA layer, for every LoRA layer of `model`, in a stable order."""
    out: dict[str, torch.nn.Module] = {}
    for path, module in model.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            if prefix == TE_PREFIX and not path.startswith("text_model."):
                # transformers 5 flattened CLIPTextModel; kohya and ComfyUI name the v4 layout's paths.
                path = f"text_model.{path}"
            out[kohya_name(prefix, path)] = module
    return out


def export_tensors(modules: dict[str, torch.nn.Module], alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft's lora_A/lora_B are kohya's lora_down/lora_up; the scale alpha/dim is the same in both."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        down = module.lora_A[ADAPTER].weight
        up = module.lora_B[ADAPTER].weight
        tensors[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return tensors


def import_tensors(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    """Load kohya-named weights back into peft layers (resuming from our own state)."""
    missing = [n for n in modules if f"{n}.lora_down.weight" not in tensors]
    if missing:
        raise KeyError(f"state lacks {len(missing)} LoRA module(s), e.g. {missing[0]}")
    with torch.no_grad():
        for name, module in modules.items():
            a = module.lora_A[ADAPTER].weight
            b = module.lora_B[ADAPTER].weight
            a.copy_(tensors[f"{name}.lora_down.weight"].to(a.device, a.dtype))
            b.copy_(tensors[f"{name}.lora_up.weight"].to(b.device, b.dtype))


def model_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """`sshs_model_hash` as the webui's additional-networks indexer computes it: sha256 of the file's
    tensor data, serialised with the training (`ss_*`) metadata only."""
    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    size = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + size:]).hexdigest()


def metadata(spec: TrainSpec, dataset: Dataset, *, step: int, started_at: float, base_model: Path,
             mixed_precision: str, save_precision: str, num_epochs: int) -> dict[str, str]:
    """kohya's metadata keys for what we trained (the ones a loader or a person reads)."""
    res = spec.resolution
    meta: dict[str, Any] = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.implementation_version": "plasma-sidecar/embedded",
        "modelspec.title": spec.output_name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": spec.trigger_word,
        "ss_trigger_word": spec.trigger_word,
        "ss_network_module": "networks.lora",
        "ss_network_dim": spec.network_dim,
        "ss_network_alpha": float(spec.network_alpha),
        "ss_learning_rate": spec.learning_rate,
        "ss_text_encoder_lr": None,
        "ss_unet_lr": None,
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_lr_scheduler": "constant",
        "ss_lr_warmup_steps": 0,
        "ss_max_train_steps": spec.steps,
        "ss_steps": step,
        "ss_epoch": num_epochs if step >= spec.steps else 0,
        "ss_num_epochs": num_epochs,
        "ss_num_batches_per_epoch": dataset.images_with_repeats * (2 if dataset.reg_subsets else 1),
        "ss_batch_size_per_device": 1,
        "ss_total_batch_size": 1,
        "ss_gradient_accumulation_steps": 1,
        "ss_gradient_checkpointing": False,
        "ss_mixed_precision": mixed_precision,
        "ss_save_precision": save_precision,
        "ss_full_fp16": False,
        "ss_max_grad_norm": 1.0,
        "ss_loss_type": "l2",
        "ss_seed": spec.seed,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": time.time(),
        "ss_output_name": spec.output_name,
        "ss_training_comment": None,
        "ss_clip_skip": None,
        "ss_cache_latents": True,
        "ss_shuffle_caption": False,
        "ss_keep_tokens": 0,
        "ss_flip_aug": False,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_enable_bucket": False,
        "ss_resolution": f"({res}, {res})",
        "ss_num_train_images": dataset.images_with_repeats,
        "ss_num_reg_images": sum(len(s.items) * s.repeats for s in dataset.reg_subsets),
        "ss_dataset_dirs": json.dumps(dataset.dataset_dirs()),
        "ss_reg_dataset_dirs": json.dumps(dataset.dataset_dirs(reg=True)),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency()),
        "ss_sd_model_name": base_model.name,
        "ss_base_model_version": "sd_v1",
        "ss_v2": False,
        "ss_prior_loss_weight": 1.0,
    }
    return {k: str(v) for k, v in meta.items()}


def save_lora(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write atomically (temp + rename): a reader never sees half a LoRA."""
    meta = {**meta, "sshs_model_hash": model_hash(tensors, meta)}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
