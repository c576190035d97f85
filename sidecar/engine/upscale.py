"""The embedded engine's print upscale: a model file from `models/upscale_models/`, run tile by tile.

Memory stays bounded whatever the image: the network sees one `tile` x `tile` piece at a time (an
RRDBNet's activations at 4x are ~64 channels of the *output* size, 1 GB per feature map for a whole
512x768 page in fp32, a few per tile at 256 px), and only the finished RGB output is held whole.
Neighbouring tiles overlap by `overlap` pixels and are blended with linear ramps across the overlap
(weights normalised by their sum), so tile seams vanish; ComfyUI's `ImageUpscaleWithModel` does the
same with tile 512, overlap 32 (`comfy_extras/nodes_upscale_model.py`), and clamps to 0..1 as here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sidecar.engine.sr_arch import Upscaler, UnsupportedUpscaler, build_upscaler

PAD_TO = 4  # Real-ESRGAN x1/x2 models fold 4x4 / 2x2 pixels first: sizes are padded to a multiple of 4


def read_upscaler_file(path: Path) -> dict:
    """The raw state dict (tensors only: a pickled file is loaded with `weights_only`)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        from sidecar.engine.models import read_safetensors

        return read_safetensors(path)
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise UnsupportedUpscaler(f"{path.name} holds a {type(data).__name__}, not a state dict")
    return data


def load_upscaler(path: Path) -> Upscaler:
    return build_upscaler(read_upscaler_file(path))


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side: every `tile - overlap` pixels, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return sorted({*range(0, size - tile, stride), size - tile})


def _ramp(length: int, start: int, end: int, total: int, band: int) -> torch.Tensor:
    """Blend weights along one side of a tile: rising over `band` pixels where a tile lies before it,
    falling where one lies after it; never 0, so every output pixel has weight."""
    w = torch.ones(length)
    if band <= 0:
        return w
    rise = (torch.arange(min(band, length), dtype=torch.float32) + 0.5) / band
    if start > 0:
        w[: rise.numel()] = torch.minimum(w[: rise.numel()], rise)
    if end < total:
        w[length - rise.numel():] = torch.minimum(w[length - rise.numel():], rise.flip(0))
    return w


def upscale_tensor(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int,
                   overlap: int, should_stop: Callable[[], bool] = lambda: False,
                   on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`x` (1, C, H, W) in 0..1 -> (1, C, H*scale, W*scale) on the CPU, clamped to 0..1. `tile` <= 0: one
    pass over the whole image. `should_stop` is asked before each tile (a cancel lands within one tile)."""
    _, channels, height, width = x.shape
    device = next((p.device for p in getattr(net, "parameters", lambda: iter(()))()), x.device)
    if tile <= 0 or (height <= tile and width <= tile):
        with torch.inference_mode():
            return net(x.to(device)).float().cpu().clamp_(0, 1)
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    out = torch.zeros(channels, height * scale, width * scale)
    weight = torch.zeros(1, height * scale, width * scale)
    band = overlap * scale
    done, total = 0, len(ys) * len(xs)
    for y in ys:
        for x0 in xs:
            if should_stop():
                raise InterruptedError("upscale stopped")
            h, w = min(tile, height - y), min(tile, width - x0)
            with torch.inference_mode():
                piece = net(x[:, :, y:y + h, x0:x0 + w].to(device)).float().cpu()[0]
            oy, ox, oh, ow = y * scale, x0 * scale, h * scale, w * scale
            wy = _ramp(oh, oy, oy + oh, height * scale, band)
            wx = _ramp(ow, ox, ox + ow, width * scale, band)
            mask = wy[:, None] * wx[None, :]
            out[:, oy:oy + oh, ox:ox + ow] += piece * mask
            weight[:, oy:oy + oh, ox:ox + ow] += mask
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return (out / weight).clamp_(0, 1)[None]


def upscale_image(up: Upscaler, image: Image.Image, *, tile: int, overlap: int, device: str = "cpu",
                  should_stop: Callable[[], bool] = lambda: False,
                  on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
    """An RGB image `up.scale` times larger. Sizes that are not a multiple of 4 are padded (edge
    reflection) for the network and cropped back."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    height, width = x.shape[2:]
    pad_h, pad_w = (-height) % PAD_TO, (-width) % PAD_TO
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    overlap = min(overlap, tile // 2)  # an overlap as large as the tile would make a tile per pixel
    net = up.net.to(device)
    try:
        y = upscale_tensor(net, x, up.scale, tile, overlap, should_stop, on_tile)
    finally:
        up.net.to("cpu")
    y = y[0, :, : height * up.scale, : width * up.scale]
    pixels = (y.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")
