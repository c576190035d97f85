"""SDXL's single-file key layout (Stability's SGM, what ComfyUI and A1111 load) <-> diffusers/transformers.

An SGM checkpoint holds the UNet under `model.diffusion_model.` (the SD1.5 names plus `label_emb.0.*`,
the pooled-text + size embedding), the VAE under `first_stage_model.`, CLIP-L under
`conditioner.embedders.0.transformer.` (transformers' own names) and OpenCLIP bigG under
`conditioner.embedders.1.model.` (open_clip's names: fused `in_proj` attention, `text_projection`
stored transposed). Loading uses diffusers' single-file converters, as `convert` does for SD1.5; the
reverse is only for `make-tiny`, checked by round trips through the loading side.
"""

from __future__ import annotations

from typing import Any

import torch

from sidecar.engine.convert import Tensors, clip_from_ldm

TE1_PREFIXES = ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.0.transformer.")
TE2_PREFIX = "conditioner.embedders.1.model."
MARKER = "conditioner.embedders.1."  # what makes a single file SDXL rather than SD1.5


def is_sdxl(keys: Any) -> bool:
    return any(k.startswith(MARKER) for k in keys)


# -- SGM -> diffusers (loading)

def te1_from_sgm(checkpoint: Tensors) -> Tensors:
    """CLIP-L -> transformers 5's flattened CLIPTextModel names (no `text_model.` level): SD 1.5's CLIP
    under SDXL's prefix."""
    return clip_from_ldm(checkpoint, TE1_PREFIXES)


def te2_from_sgm(checkpoint: Tensors, text_model: torch.nn.Module) -> Tensors:
    """OpenCLIP bigG -> CLIPTextModelWithProjection (diffusers' converter: splits in_proj into q/k/v,
    transposes text_projection)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    return convert_open_clip_checkpoint(text_model, checkpoint, prefix=TE2_PREFIX)


# -- diffusers -> SGM (make-tiny)

_TE2_LAYER_RENAMES = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                      ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))
_TE2_FIXED = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
              "text_model.embeddings.position_embedding.weight": "positional_embedding",
              "text_model.final_layer_norm.weight": "ln_final.weight",
              "text_model.final_layer_norm.bias": "ln_final.bias"}
_LAYER = "text_model.encoder.layers."


def te1_to_sgm(state: Tensors) -> Tensors:
    return {TE1_PREFIXES[0] + k: v for k, v in state.items()}


def te2_to_sgm(state: Tensors) -> Tensors:
    out: Tensors = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _TE2_FIXED:
            out[TE2_PREFIX + _TE2_FIXED[key]] = value
        elif key == "text_projection.weight":
            out[TE2_PREFIX + "text_projection"] = value.T.contiguous()
        elif key.startswith(_LAYER):
            index, rest = key[len(_LAYER):].split(".", 1)
            base = f"{TE2_PREFIX}transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                part, kind = rest.split(".")[1], rest.split(".")[2]  # q_proj, weight|bias
                fused.setdefault(f"{base}attn.in_proj_{kind}", {})[part] = value
                continue
            for d_name, o_name in _TE2_LAYER_RENAMES:
                if rest.startswith(d_name):
                    out[base + o_name + rest[len(d_name):]] = value
                    break
            else:
                raise KeyError(f"no OpenCLIP name for {key}")
        else:
            raise KeyError(f"no OpenCLIP name for {key}")
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def unet_module_names(unet: torch.nn.Module, config: dict[str, Any]) -> dict[str, str]:
    """diffusers module path -> its SGM path (no `model.diffusion_model.`), for every Linear/Conv2d: the
    names kohya's SDXL LoRAs use (sd-scripts trains SDXL on the original UNet's module tree)."""
    from sidecar.engine.convert import UNET_PREFIX, unet_to_ldm

    paths = {f"{path}.weight": path for path, module in unet.named_modules()
             if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    renamed = unet_to_ldm(paths, config)  # type: ignore[arg-type]  # values ride along untouched
    return {path: key[len(UNET_PREFIX):-len(".weight")] for key, path in renamed.items()}  # type: ignore[misc]
