"""Tiny random-weight upscale models in the published state-dict layouts (ESRGAN's RRDBNet in its original
`model.N` keys, Real-ESRGAN's BasicSR keys, SRVGGNetCompact), written as real model files the way a user
drops a downloaded `.pth` / `.safetensors` into `models/upscale_models/`."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_UPSCALER = "4x-tiny-esrgan.pth"


SPANDREL_GROWTH = 32  # the growth channels spandrel's ESRGAN always builds (its RRDBNet's default `gc`)


def rrdbnet_state(feat: int = 8, blocks: int = 1, grow: int = SPANDREL_GROWTH, ups: int = 2, unshuffle: int = 1,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """BasicSR keys (conv_first, body.N.rdbK.convJ, conv_body, conv_upK, conv_hr, conv_last). Small in
    features and blocks, which ComfyUI reads off the tensors, but 32 growth channels, which it does not."""
    from sidecar.engine.sr_arch import RRDBNet

    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in RRDBNet(3, 3, feat, blocks, grow, ups, unshuffle).state_dict().items()}
    # A random network's output is near 0, all clamped to black: centre it and widen it, so images differ.
    sd["conv_last.weight"] *= 8
    sd["conv_last.bias"].fill_(0.5)
    return sd


def srvgg_state(feat: int = 8, convs: int = 2, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    from sidecar.engine.sr_arch import SRVGGNetCompact

    torch.manual_seed(seed)
    return {k: v.clone() for k, v in SRVGGNetCompact(3, 3, feat, convs, scale).state_dict().items()}


def as_old_esrgan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the original ESRGAN names (`model.0`, `model.1.sub.N.RDBk.convj.0`,
    `model.1.sub.<blocks>`, `model.3`/`model.6` upsampling, `model.8` HR conv, `model.10` last), x4 only."""
    blocks = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}", "conv_up1": "model.3",
             "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][-1]}.{parts[3]}.0.{parts[4]}"] = value
        else:
            out[f"{names[parts[0]]}.{parts[1]}"] = value
    return out


def write_upscaler(folder: Path, name: str = TINY_UPSCALER, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A model file in `folder` (made if needed): `.pth` as the originals ship (ESRGAN's `model.N` keys as a
    plain dict, Real-ESRGAN's BasicSR keys under `params_ema`), `.safetensors` as a plain state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else as_old_esrgan(rrdbnet_state())
    path = folder / name
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state if "model.0.weight" in state else {"params_ema": state}, str(path))
    return path


def comfyui_loads(path: Path) -> int:
    """What ComfyUI's `UpscaleModelLoader` makes of a model file: its scale, or torch's RuntimeError where
    it refuses the file. ComfyUI loads with spandrel, whose ESRGAN detection reads in/out channels,
    features, blocks, scale and pixel-unshuffle off the tensors but builds every dense block with its
    default 32 growth channels, so an RRDBNet trained with other growth fails its strict load with "size
    mismatch" (chaiNNer-org/spandrel: architectures/ESRGAN/__init__.py, `ESRGANArch.load`)."""
    from sidecar.engine.sr_arch import RRDBNet
    from sidecar.engine.upscale import load_upscaler

    up = load_upscaler(path)  # reads every hyper-parameter off the shapes, growth included
    net = up.net
    if isinstance(net, RRDBNet):
        as_spandrel = RRDBNet(up.channels, up.channels, net.conv_first.out_channels, len(net.body), SPANDREL_GROWTH,
                              net.ups, net.unshuffle)
        as_spandrel.load_state_dict(net.state_dict(), strict=True)  # RuntimeError: size mismatch for ...
    return up.scale
