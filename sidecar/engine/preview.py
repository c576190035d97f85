"""The embedded engine's live previews: the sampler's current estimate of the image, from the latent.

As ComfyUI's `latent2rgb` previewer: the predicted clean latent (x0) times the family's latent-to-RGB
factors (a 4x3 linear map, plus a bias for SDXL, from `comfy/latent_formats.py`), mapped from [-1, 1]
to 0..255. No VAE
call: at 512x768 it is a 64x96x4 @ 4x3 product plus a small JPEG, well under a per cent of a step.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sidecar.previews import MAX_SIDE, small_jpeg

# Rows: the 4 latent channels; columns: R, G, B (SD1.5, as ComfyUI's latent formats list them).
SD15_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                   (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                   (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)
FACTORS = {"sd15": (SD15_LATENT_RGB, None), "sdxl": (SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS)}


def latent_rgb(latent: torch.Tensor, family: str = "sd15") -> np.ndarray:
    """(1, 4, h, w) scaled latent -> (h, w, 3) uint8."""
    table, bias = FACTORS.get(family, FACTORS["sd15"])
    factors = torch.tensor(table, dtype=torch.float32, device=latent.device)
    rgb = latent[0].float().permute(1, 2, 0) @ factors
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32, device=latent.device)
    return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8).cpu().numpy()


def preview_jpeg(latent: torch.Tensor, max_side: int = MAX_SIDE, family: str = "sd15") -> tuple[bytes, int, int]:
    return small_jpeg(Image.fromarray(latent_rgb(latent, family)), max_side)
