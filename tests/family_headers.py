"""Safetensors files of each model family, synthesized: real headers (the tensor names and shapes of
BFL's, Stability's, kohya's and diffusers' files) over sparse zero data, so a "12 GB" model costs
nothing. Shared by the family tests and the job tests that need a checkpoint of a given family."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

SD15_CHECKPOINT = {
    "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "first_stage_model.decoder.conv_out.weight": [3, 128, 3, 3],
}
SDXL_CHECKPOINT = {
    "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
    "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "conditioner.embedders.1.model.ln_final.weight": [1280],
}
FLUX_DIFFUSION_MODEL = {  # ComfyUI's diffusion_models/flux1-dev.safetensors: BFL's names, no prefix
    "img_in.weight": [3072, 64],
    "guidance_in.in_layer.weight": [3072, 256],
    "double_blocks.0.img_attn.qkv.weight": [9216, 3072],
    "single_blocks.0.linear1.weight": [21504, 3072],
}
SD15_LORA = {  # kohya sd-scripts networks/lora.py on SD 1.5 (diffusers-style UNet names)
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 768],
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 8],
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 768],
}
SDXL_LORA = {  # kohya on SDXL: the original UNet's names and two text encoders
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 2048],
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": [640, 8],
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 768],
    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 1280],
}
SDXL_TE_ONLY_LORA = {
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 768],
    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [8, 1280],
}
FLUX_KOHYA_LORA = {  # networks/lora_flux.py: LORA_PREFIX_FLUX = "lora_unet", CLIP-L "lora_te1"
    "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [16, 3072],
    "lora_unet_single_blocks_0_linear1.lora_down.weight": [16, 3072],
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [16, 768],
}
FLUX_DIFFUSERS_LORA = {  # ai-toolkit / diffusers (peft) names
    "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": [16, 3072],
    "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": [16, 3072],
}
SD2_CHECKPOINT = {
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 1024],
    "cond_stage_model.model.ln_final.weight": [1024],
}


def write_safetensors(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file with these tensors (fp16 zeros), its data left sparse."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path
