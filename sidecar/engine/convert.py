"""State-dict key layouts: SD1.5's original single-file layout <-> diffusers/transformers module names.

Loading (original -> diffusers) uses diffusers' own single-file converters, the reference real
checkpoints are tested against; the CLIP rename is ours because transformers 5 dropped the
`text_model.` level. Saving (diffusers -> original) is only for `make-tiny`, which must write files
in the layout real checkpoints have; tests check that it round-trips through the loading side.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
CONTROLNET_PREFIX = "control_model."

Tensors = dict[str, torch.Tensor]


# -- original -> diffusers (loading)

def unet_from_ldm(checkpoint: Tensors, config: dict[str, Any]) -> Tensors:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(checkpoint, config)


def vae_from_ldm(checkpoint: Tensors, config: dict[str, Any]) -> Tensors:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(checkpoint, config)


def clip_from_ldm(checkpoint: Tensors, prefixes: tuple[str, ...] = CLIP_PREFIXES) -> Tensors:
    """`cond_stage_model.transformer.text_model.X` -> `X` (transformers 5's flattened CLIPTextModel), or the
    same under other `prefixes` (SDXL's first encoder). Old checkpoints carry a `position_ids` buffer the
    model no longer has: dropped."""
    out: Tensors = {}
    for key, value in checkpoint.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                name = key[len(prefix):]
                if not name.endswith("position_ids"):
                    out[name] = value
                break
    return out


def controlnet_from_ldm(checkpoint: Tensors, config: dict[str, Any]) -> Tensors:
    """ControlNet 1.x files come with `control_model.` (the usual .pth/.safetensors) or without it."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    return convert_controlnet_checkpoint(checkpoint, config)


def is_diffusers_controlnet(checkpoint: Tensors) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in checkpoint


# -- diffusers -> original (make-tiny)

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
               ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"))


def _has_attention(block_type: str) -> bool:
    return block_type.startswith("CrossAttn")


def _down_path(config: dict[str, Any]) -> list[tuple[str, str, tuple]]:
    """(diffusers prefix, original prefix, renames) for the encoder half shared by UNet and ControlNet."""
    layers = config["layers_per_block"]
    levels = config["down_block_types"]
    pairs: list[tuple[str, str, tuple]] = [(d, o, ()) for d, o in _UNET_FIXED[:3]]
    idx = 1
    for b, kind in enumerate(levels):
        for j in range(layers):
            pairs.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{idx}.0", _RESNET))
            if _has_attention(kind):
                pairs.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{idx}.1", ()))
            idx += 1
        if b < len(levels) - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", ()))
            idx += 1
    pairs += [("mid_block.resnets.0", "middle_block.0", _RESNET), ("mid_block.attentions.0", "middle_block.1", ()),
              ("mid_block.resnets.1", "middle_block.2", _RESNET)]
    return pairs


def _input_block_count(config: dict[str, Any]) -> int:
    levels = len(config["down_block_types"])
    return 1 + levels * config["layers_per_block"] + (levels - 1)


def _rename(state: Tensors, pairs: list[tuple[str, str, tuple]], prefix: str) -> Tensors:
    out: Tensors = {}
    for key, value in state.items():
        for d_prefix, o_prefix, renames in pairs:
            if key.startswith(d_prefix + "."):
                rest = key[len(d_prefix) + 1:]
                for d_name, o_name in renames:
                    if rest.startswith(d_name + "."):
                        rest = o_name + rest[len(d_name):]
                        break
                out[prefix + o_prefix + "." + rest] = value
                break
        else:
            raise KeyError(f"no original-layout name for {key}")
    return out


def unet_to_ldm(state: Tensors, config: dict[str, Any]) -> Tensors:
    pairs = _down_path(config) + [(d, o, ()) for d, o in _UNET_FIXED[3:]]
    if config.get("addition_embed_type") == "text_time":  # SDXL's pooled-text + size embedding
        pairs += [("add_embedding.linear_1", "label_emb.0.0", ()), ("add_embedding.linear_2", "label_emb.0.2", ())]
    layers = config["layers_per_block"]
    levels = config["up_block_types"]
    idx = 0
    for u, kind in enumerate(levels):
        for j in range(layers + 1):
            pairs.append((f"up_blocks.{u}.resnets.{j}", f"output_blocks.{idx}.0", _RESNET))
            if _has_attention(kind):
                pairs.append((f"up_blocks.{u}.attentions.{j}", f"output_blocks.{idx}.1", ()))
            if j == layers and u < len(levels) - 1:
                slot = 2 if _has_attention(kind) else 1
                pairs.append((f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{idx}.{slot}.conv", ()))
            idx += 1
    return _rename(state, pairs, UNET_PREFIX)


def controlnet_to_ldm(state: Tensors, config: dict[str, Any]) -> Tensors:
    pairs = _down_path(config)
    for i in range(_input_block_count(config)):
        pairs.append((f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", ()))
    pairs.append(("controlnet_mid_block", "middle_block_out.0", ()))
    pairs.append(("controlnet_cond_embedding.conv_in", "input_hint_block.0", ()))
    blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    for j in range(blocks):
        pairs.append((f"controlnet_cond_embedding.blocks.{j}", f"input_hint_block.{2 * (j + 1)}", ()))
    # The original hint block is one nn.Sequential: convs at even indices, SiLUs between them.
    pairs.append(("controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * (blocks + 1)}", ()))
    return _rename(state, pairs, CONTROLNET_PREFIX)


_VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def vae_to_ldm(state: Tensors, config: dict[str, Any]) -> Tensors:
    levels = len(config["down_block_types"])
    pairs: list[tuple[str, str, tuple]] = [
        ("encoder.conv_in", "encoder.conv_in", ()), ("encoder.conv_out", "encoder.conv_out", ()),
        ("encoder.conv_norm_out", "encoder.norm_out", ()), ("decoder.conv_in", "decoder.conv_in", ()),
        ("decoder.conv_out", "decoder.conv_out", ()), ("decoder.conv_norm_out", "decoder.norm_out", ()),
        ("quant_conv", "quant_conv", ()), ("post_quant_conv", "post_quant_conv", ()),
    ]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", _VAE_RESNET),
                  (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", _VAE_RESNET),
                  (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTN)]
    for i in range(levels):
        pairs.append((f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", ()))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", ()))
        # The decoder's up blocks are numbered from the lowest resolution in diffusers, the highest originally.
        pairs.append((f"decoder.up_blocks.{i}.resnets", f"decoder.up.{levels - 1 - i}.block", ()))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{levels - 1 - i}.upsample.conv", ()))
    renamed = _rename(state, pairs, VAE_PREFIX)
    out: Tensors = {}
    for key, value in renamed.items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention projections are 1x1 convolutions
        out[key] = value
    return out


def clip_to_ldm(state: Tensors) -> Tensors:
    return {CLIP_PREFIXES[0] + k: v for k, v in state.items()}
