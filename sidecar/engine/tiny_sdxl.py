"""A random-weight SDXL-architecture checkpoint and kohya SDXL LoRA in the file formats of real ones.

`make_sdxl_models(out)` writes `checkpoints/tiny-sdxl.safetensors` in the SGM key layout real SDXL
files have (UNet with its `label_emb` size embedding, VAE, CLIP-L and OpenCLIP bigG text encoders:
`convert_sdxl`), a `<name>.arch.json` naming its small architecture, a byte-level tokenizer, and
`loras/tiny-sdxl-lora.safetensors` with sd-scripts' SDXL key names (`lora_unet_<SGM module>`,
`lora_te1_`, `lora_te2_`). The two text encoders keep SDXL's widths (768 + 1280 = a 2048-wide
context), so the header reads as SDXL as a real file's does (`sidecar.families`); everything else is
small, and SD's 8x latent downsampling is kept. `full_size=True` writes the real architecture with
random weights (for benchmarks: about 6.9 GB in fp16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sidecar.engine import convert, convert_sdxl
from sidecar.engine.models import shipped_config
from sidecar.engine.tiny import (
    SGM_IMPLEMENTATION, TINY_VAE, ModelSet, _save, _write_arch, modelspec, random_lora_tensors,
)
from sidecar.engine.tokenizer import byte_level_vocab, write_tokenizer

CHECKPOINT = "tiny-sdxl.safetensors"
LORA = "tiny-sdxl-lora.safetensors"
FULL_CHECKPOINT = "random-sdxl.safetensors"
FULL_LORA = "random-lora-sdxl.safetensors"

TINY_POOLED = 32  # the second encoder's projection (SDXL: 1280)
TINY_TIME_EMBED = 8  # per size id (SDXL: 256); six ids
TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2],  # SDXL stacks several transformer blocks per level, so do we
    "attention_head_dim": [2, 4],
    "addition_time_embed_dim": TINY_TIME_EMBED,
    "projection_class_embeddings_input_dim": TINY_POOLED + 6 * TINY_TIME_EMBED,
    "norm_num_groups": 8,
    "sample_size": 32,
}
_TINY_TOKENS = {"vocab_size": 514, "max_position_embeddings": 77, "bos_token_id": 512, "eos_token_id": 513,
                "pad_token_id": 513, "num_hidden_layers": 2, "intermediate_size": 64}
TINY_TEXT_ENCODER = {**_TINY_TOKENS, "hidden_size": 768, "num_attention_heads": 12}
TINY_TEXT_ENCODER_2 = {**_TINY_TOKENS, "hidden_size": 1280, "num_attention_heads": 20, "projection_dim": TINY_POOLED}


def _clip(part: str, overrides: dict[str, Any], with_projection: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = {**shipped_config(part, "sdxl"), **overrides}
    config.pop("architectures", None)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(CLIPTextConfig(**config))
    return model, config


def make_sdxl_models(out: Path, *, seed: int = 0, full_size: bool = False,
                     dtype: torch.dtype = torch.float32) -> ModelSet:
    """Write the SDXL checkpoint and LoRA under `out` (checkpoints/, loras/); returns their paths
    (`controlnet` is None: the embedded engine runs no SDXL ControlNet)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet_cfg = {**shipped_config("unet", "sdxl"), **({} if full_size else TINY_UNET)}
    vae_cfg = {**shipped_config("vae", "sdxl"), **({} if full_size else TINY_VAE)}
    unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = AutoencoderKL.from_config(vae_cfg)
    te1, te1_cfg = _clip("text_encoder", {} if full_size else TINY_TEXT_ENCODER, with_projection=False)
    te2, te2_cfg = _clip("text_encoder_2", {} if full_size else TINY_TEXT_ENCODER_2, with_projection=True)

    lora = random_sdxl_lora(unet, te1, te2)
    for model in (unet, vae, te1, te2):
        # In place, one tensor at a time: full-size SDXL in fp32 is 13.5 GB, and a cast copy of it beside that would
        # not fit a 24 GB machine.
        torch.nn.Module.to(model, dtype)
    name = FULL_CHECKPOINT if full_size else CHECKPOINT
    ckpt = out / "checkpoints" / name
    tensors = {
        **convert.unet_to_ldm(unet.state_dict(), unet_cfg),
        **convert.vae_to_ldm(vae.state_dict(), vae_cfg),
        **convert_sdxl.te1_to_sgm(te1.state_dict()),
        **convert_sdxl.te2_to_sgm(te2.state_dict()),
    }
    _save(ckpt, tensors, modelspec("stable-diffusion-xl-v1-base", ckpt.stem, 1024, SGM_IMPLEMENTATION))
    del tensors
    tok_dir = ckpt.parent / (name.removesuffix(".safetensors") + ".tokenizer")
    write_tokenizer(tok_dir, byte_level_vocab(), [])
    _write_arch(ckpt, {"unet": unet_cfg, "vae": vae_cfg, "text_encoder": te1_cfg, "text_encoder_2": te2_cfg,
                       "tokenizer": tok_dir.name})

    lora_path = out / "loras" / (FULL_LORA if full_size else LORA)
    _save(lora_path, lora, _lora_metadata(lora_path.stem, name))
    return ModelSet(out, ckpt, lora_path, None)


@torch.no_grad()
def random_sdxl_lora(unet: torch.nn.Module, te1: torch.nn.Module, te2: torch.nn.Module,
                     rank: int = 4) -> dict[str, torch.Tensor]:
    """sd-scripts' SDXL LoRA layout: the UNet's attention projections by their SGM names, both text
    encoders' self-attention by transformers names, random up weights (a trained LoRA's are not zero)."""
    from sidecar.engine.lora import TE1_PREFIX, TE2_PREFIX, UNET_PREFIX, kohya_names

    modules = dict(unet.named_modules())
    targets = {UNET_PREFIX + sgm.replace(".", "_"): modules[path]
               for path, sgm in convert_sdxl.unet_module_names(unet, dict(unet.config)).items()
               if path.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))}
    for encoder, prefix in ((te1, TE1_PREFIX), (te2, TE2_PREFIX)):
        targets.update({k: m for k, m in kohya_names(encoder, prefix).items()
                        if k.endswith(("_q_proj", "_k_proj", "_v_proj", "_out_proj"))})
    return random_lora_tensors(targets, rank)


def _lora_metadata(title: str, checkpoint: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "4.0",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": checkpoint,
        "ss_output_name": title,
        "ss_trigger_word": "spyke_plasma_v1",
        "ss_steps": "0",
        "ss_resolution": "(1024, 1024)",
        "ss_training_comment": "random weights, made by `sidecar models make-tiny --family sdxl` for tests",
        **modelspec("stable-diffusion-xl-v1-base/lora", title, 1024, SGM_IMPLEMENTATION),
    }
