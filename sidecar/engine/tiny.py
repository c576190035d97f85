"""Random-weight SD1.5-architecture model sets in the file formats of real ones, for tests and demos.

`make_models(out)` writes a ComfyUI-style models dir: a single-file checkpoint in the original key
layout, a kohya-format LoRA, a ControlNet 1.x file (`control_model.*` layout), each with a
`<name>.arch.json` naming its small architecture, and a byte-level CLIP-format tokenizer. The tiny
set keeps SD's 8x latent downsampling, so a 512x768 job is a 64x96 latent as on the real model.
`full_size=True` writes the real SD1.5 architecture with random weights (for benchmarks on a GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sidecar.engine import convert
from sidecar.engine.models import ARCH_SUFFIX, shipped_config
from sidecar.engine.tokenizer import byte_level_vocab, write_tokenizer

CHECKPOINT = "tiny-sd15.safetensors"
LORA = "tiny-lora.safetensors"
CONTROLNET = "tiny-controlnet.safetensors"
FULL_CHECKPOINT = "random-sd15.safetensors"
FULL_CONTROLNET = "random-controlnet-sd15.safetensors"
FULL_LORA = "random-lora-sd15.safetensors"

TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    # Attention at the lower resolution only: 64x96 latents would make full-resolution attention the
    # whole cost of a tiny model. Both attention kinds (attn1 self, attn2 cross) are still there.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "block_out_channels": [8, 16, 32, 32],  # four levels: 8x downsampling, as SD's VAE
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
TINY_TEXT_ENCODER = {
    "vocab_size": 514,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
TINY_CONDITIONING_CHANNELS = (8, 8, 16, 16)  # SD1.5's ControlNet hint encoder has (16, 32, 96, 256)


@dataclass
class ModelSet:
    root: Path
    checkpoint: Path
    lora: Path
    controlnet: Path | None  # None for SDXL (tiny_sdxl)


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # readable like any model file (the writer creates it owner-only)
    tmp.replace(path)


def _write_arch(model: Path, arch: dict[str, Any]) -> None:
    stem = model.name[: -len(model.suffix)]
    (model.parent / (stem + ARCH_SUFFIX)).write_text(json.dumps(arch, indent=2) + "\n", encoding="utf-8")


def _text_config(overrides: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    cfg = {**shipped_config("text_encoder"), **overrides}
    cfg.pop("architectures", None)
    return CLIPTextConfig(**cfg)


def _arch_of(config: Any, part: str) -> dict[str, Any]:
    """The keys our shipped config for `part` has, read off a built model's config."""
    keys = shipped_config(part)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if k in keys}


def make_models(out: Path, *, seed: int = 0, full_size: bool = False, dtype: torch.dtype = torch.float32) -> ModelSet:
    """Write the model set under `out` (checkpoints/, loras/, controlnet/); returns the file paths."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet_cfg = {**shipped_config("unet"), **({} if full_size else TINY_UNET)}
    vae_cfg = {**shipped_config("vae"), **({} if full_size else TINY_VAE)}
    # The full-size text encoder keeps CLIP's 49408-token embedding (SD1.5's shapes); the byte-level
    # tokenizer's ids stay below 514 either way.
    unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = AutoencoderKL.from_config(vae_cfg)
    text_encoder = CLIPTextModel(_text_config({} if full_size else TINY_TEXT_ENCODER))
    hint_channels = tuple(shipped_config("controlnet")["conditioning_embedding_out_channels"]) if full_size \
        else TINY_CONDITIONING_CHANNELS
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels)
    _randomize_zero_convs(controlnet)
    cn_cfg = _arch_of(controlnet.config, "controlnet")

    name = FULL_CHECKPOINT if full_size else CHECKPOINT
    ckpt = out / "checkpoints" / name
    tensors = {
        **convert.unet_to_ldm(unet.state_dict(), unet_cfg),
        **convert.vae_to_ldm(vae.state_dict(), vae_cfg),
        **convert.clip_to_ldm(text_encoder.state_dict()),
    }
    _save(ckpt, {k: v.to(dtype) for k, v in tensors.items()},
          modelspec("stable-diffusion-v1", ckpt.stem, 512, SGM_IMPLEMENTATION))
    tok_dir = ckpt.parent / (name.removesuffix(".safetensors") + ".tokenizer")
    write_tokenizer(tok_dir, byte_level_vocab(), [])
    te_arch = _arch_of(text_encoder.config.to_dict(), "text_encoder")
    _write_arch(ckpt, {"unet": unet_cfg, "vae": vae_cfg, "text_encoder": te_arch, "tokenizer": tok_dir.name})

    cn_path = out / "controlnet" / (FULL_CONTROLNET if full_size else CONTROLNET)
    cn_state = convert.controlnet_to_ldm(controlnet.state_dict(), cn_cfg)
    _save(cn_path, {k: v.to(dtype) for k, v in cn_state.items()})
    _write_arch(cn_path, {"controlnet": cn_cfg})

    lora_path = out / "loras" / (FULL_LORA if full_size else LORA)
    _save(lora_path, _random_lora(unet, text_encoder), _lora_metadata(lora_path.stem, name))
    return ModelSet(out, ckpt, lora_path, cn_path)


@torch.no_grad()
def _randomize_zero_convs(controlnet: torch.nn.Module) -> None:
    """A fresh ControlNet's output convolutions are zero (it starts as a no-op); a random stand-in must
    change the image, so they get small random weights."""
    for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(module.weight, std=0.05)
        torch.nn.init.normal_(module.bias, std=0.05)


@torch.no_grad()
def _random_lora(unet: torch.nn.Module, text_encoder: torch.nn.Module, rank: int = 4) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA on the attention projections (UNet attn1/attn2, every CLIP layer's
    self-attention), with random up weights (a trained LoRA's are not zero either)."""
    from sidecar.engine.lora import TE_PREFIX, UNET_PREFIX, kohya_names

    targets = {**{k: m for k, m in kohya_names(unet, UNET_PREFIX).items()
                  if any(k.endswith(s) for s in ("_to_q", "_to_k", "_to_v", "_to_out_0"))},
               **{k: m for k, m in kohya_names(text_encoder, TE_PREFIX).items()
                  if any(k.endswith(s) for s in ("_q_proj", "_k_proj", "_v_proj", "_out_proj"))}}
    return random_lora_tensors(targets, rank)


def random_lora_tensors(targets: dict[str, torch.nn.Module], rank: int) -> dict[str, torch.Tensor]:
    """Random kohya down/up/alpha tensors for each named module (in name order, so a seed makes the same file)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in sorted(targets.items()):
        out_f, in_f = module.weight.shape[:2]
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_f) / in_f**0.5
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_f, rank) / rank**0.5
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    return tensors


# sd-scripts' IMPL_STABILITY_AI and IMPL_DIFFUSERS (library/sai_model_spec.py): what it writes for a
# single-file checkpoint and an SD 1.x LoRA.
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
DIFFUSERS_IMPLEMENTATION = "diffusers"


def modelspec(architecture: str, title: str, resolution: int, implementation: str) -> dict[str, str]:
    """The SAI model spec's MUST keys (and resolution, prediction type) as sd-scripts writes them: the
    header then says its own family (`sidecar.families`) however small its tensors are."""
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "epsilon",
    }


def _lora_metadata(title: str, checkpoint: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "4.0",
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": checkpoint,
        "ss_output_name": title,
        "ss_trigger_word": "spyke_plasma_v1",
        "ss_steps": "0",
        "ss_resolution": "(512, 512)",
        "ss_training_comment": "random weights, made by `sidecar models make-tiny` for tests",
        **modelspec("stable-diffusion-v1/lora", title, 512, DIFFUSERS_IMPLEMENTATION),
    }
