"""The two super-resolution networks most print upscalers are, rebuilt from their published state-dict layout.

Why our own and not spandrel (which ComfyUI uses): spandrel imports torchvision, and the only torch the
build machines can install without a network is the CPU wheel `2.13.0+cpu`; PyPI's torchvision for it is
the CUDA build, whose extension fails to load beside a CPU torch (`operator torchvision::nms does not
exist`), so `import spandrel` fails. The two architectures below cover the common ESRGAN-family models
(4x-UltraSharp, 4x-AnimeSharp, RealESRGAN_x4plus(_anime_6B), RealESRGAN_x2plus, realesr-general-x4v3,
realesr-animevideov3, ...). Other architectures (SwinIR, HAT, DAT, ...) run on ComfyUI, not here.

- `RRDBNet` (ESRGAN, Real-ESRGAN): both key layouts. The BasicSR one (`conv_first`, `body.N.rdb1.conv1`,
  `conv_body`, `conv_up1`, `conv_hr`, `conv_last`; x2 and x1 models pixel-unshuffle their input first)
  and the original ESRGAN one (`model.0`, `model.1.sub.N.RDB1.conv1.0`, `model.3`, ...), renamed to the first.
- `SRVGGNetCompact` (Real-ESRGAN "compact"): `body.0` conv, `body.1` PReLU, ... `body.2K` last conv, then
  pixel shuffle, plus the nearest-neighbour upscaled input.

Every hyper-parameter (features, blocks, growth, scale) is read off the tensors' shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedUpscaler(ValueError):
    """The state dict is none of the architectures above (the message says what it looked like)."""


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2, inplace=True)


class ResidualDenseBlock(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.conv1 = nn.Conv2d(feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = _lrelu(self.conv1(x))
        x2 = _lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = _lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = _lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(feat, grow)
        self.rdb2 = ResidualDenseBlock(feat, grow)
        self.rdb3 = ResidualDenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """`ups` nearest-x2 + conv stages; `unshuffle` > 1 folds the input first (Real-ESRGAN x2: 2, x1: 4)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, feat: int = 64, blocks: int = 23, grow: int = 32,
                 ups: int = 2, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.scale = 2 ** ups // unshuffle
        self.conv_first = nn.Conv2d(in_ch * unshuffle * unshuffle, feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(feat, grow) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        for i in range(ups):
            self.add_module(f"conv_up{i + 1}", nn.Conv2d(feat, feat, 3, 1, 1))
        self.ups = ups
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.ups):
            feat = _lrelu(getattr(self, f"conv_up{i + 1}")(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 3, feat: int = 64, convs: int = 16, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_ch, feat, 3, 1, 1), nn.PReLU(feat)]
        for _ in range(convs):
            layers += [nn.Conv2d(feat, feat, 3, 1, 1), nn.PReLU(feat)]
        layers.append(nn.Conv2d(feat, out_ch * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


@dataclass(frozen=True)
class Upscaler:
    """A loaded network, ready for `sidecar.engine.upscale.upscale_image`."""

    net: nn.Module
    scale: int
    architecture: str  # "ESRGAN" | "SRVGGNetCompact"
    channels: int  # input (and output) colour channels: 3


# -- reading a state dict

OLD_ESRGAN_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")


def unwrap(state: dict) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's releases keep the weights under `params_ema` (or `params`); some trainers prefix
    `module.` (DataParallel)."""
    for key in ("params_ema", "params", "state_dict", "model"):
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _from_old_esrgan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`model.0` conv_first, `model.1.sub.N.RDBk.convj.0` blocks, `model.1.sub.<last>` conv_body, then
    one `model.<i>` conv per x2 stage, `conv_hr` and `conv_last` (the last two indices)."""
    out: dict[str, torch.Tensor] = {}
    blocks = {int(m.group(1)) for k in sd if (m := OLD_ESRGAN_BLOCK.fullmatch(k))}
    body_index = max(blocks) + 1 if blocks else 0
    tail = sorted({int(k.split(".")[1]) for k in sd if re.fullmatch(r"model\.\d+\.weight", k)} - {0})
    if len(tail) < 2:
        raise UnsupportedUpscaler("an ESRGAN-style `model.N` state dict without its last convolutions")
    *ups, hr, last = tail
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last", **{i: f"conv_up{n + 1}" for n, i in enumerate(ups)}}
    for key, value in sd.items():
        if m := OLD_ESRGAN_BLOCK.fullmatch(key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key):
            if int(m.group(1)) != body_index:
                raise UnsupportedUpscaler(f"unexpected ESRGAN key {key}")
            out[f"conv_body.{m.group(2)}"] = value
        elif m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            index = int(m.group(1))
            if index not in names:
                raise UnsupportedUpscaler(f"unexpected ESRGAN key {key}")
            out[f"{names[index]}.{m.group(2)}"] = value
        else:
            raise UnsupportedUpscaler(f"unexpected ESRGAN key {key}")
    return out


def _rrdbnet(sd: dict[str, torch.Tensor]) -> Upscaler:
    feat, in_folded = sd["conv_first.weight"].shape[:2]
    out_ch = sd["conv_last.weight"].shape[0]
    blocks = len({int(k.split(".")[1]) for k in sd if k.startswith("body.")})
    grow = sd["body.0.rdb1.conv1.weight"].shape[0] if blocks else 32
    ups = len({k.split(".")[0] for k in sd if re.match(r"conv_up\d+\.", k)})
    unshuffle = int(round(math.sqrt(in_folded / out_ch)))
    if unshuffle * unshuffle * out_ch != in_folded or 2 ** ups < unshuffle:
        raise UnsupportedUpscaler(f"an RRDBNet with {in_folded} input channels for {out_ch} output channels")
    net = RRDBNet(out_ch, out_ch, int(feat), blocks, int(grow), ups, unshuffle)
    return Upscaler(_loaded(net, sd), net.scale, "ESRGAN", int(out_ch))


def _srvgg(sd: dict[str, torch.Tensor]) -> Upscaler:
    convs = sorted(int(k.split(".")[1]) for k in sd if re.fullmatch(r"body\.\d+\.weight", k) and sd[k].dim() == 4)
    last = convs[-1]
    if "body.1.weight" not in sd:
        raise UnsupportedUpscaler("an SRVGGNetCompact without PReLU activations (only the PReLU form is supported)")
    in_ch, feat = sd["body.0.weight"].shape[1], sd["body.0.weight"].shape[0]
    out_total = sd[f"body.{last}.weight"].shape[0]
    scale = int(round(math.sqrt(out_total / in_ch)))
    if scale * scale * in_ch != out_total or last % 2:
        raise UnsupportedUpscaler(f"an SRVGGNetCompact whose last convolution has {out_total} outputs")
    net = SRVGGNetCompact(int(in_ch), int(in_ch), int(feat), last // 2 - 1, scale)
    return Upscaler(_loaded(net, sd), scale, "SRVGGNetCompact", int(in_ch))


def _loaded(net: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    try:
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as exc:  # a missing, extra or mis-shaped tensor: not the layout we read it as
        raise UnsupportedUpscaler(str(exc).splitlines()[0]) from None
    return net.eval().requires_grad_(False)


def build_upscaler(state: dict) -> Upscaler:
    """The network a state dict describes, with its weights; `UnsupportedUpscaler` for anything else."""
    sd = unwrap(state)
    if "model.0.weight" in sd:
        sd = _from_old_esrgan(sd)
    if "conv_first.weight" in sd and "conv_last.weight" in sd:
        return _rrdbnet(sd)
    if "body.0.weight" in sd and not any(k.startswith("conv_") for k in sd):
        return _srvgg(sd)
    sample = ", ".join(sorted(sd)[:4]) or "no tensors"
    raise UnsupportedUpscaler(f"not an ESRGAN (RRDBNet) or SRVGGNetCompact state dict (keys: {sample}, ...)")
