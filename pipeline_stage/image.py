"""The PNG the overlay stage gets: RGB, 8 bits per channel, the requested size, with the parameters in
text chunks (`parameters`: an A1111-style summary; `prompt`: the API-format workflow JSON, so the image
alone is enough to reproduce it). No `workflow` chunk: ComfyUI reads that one as its UI graph format
(nodes and links), which we do not have; dropped on its canvas, an image with only `prompt` loads as
the API workflow it is.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from pipeline_stage.errors import JobFailedError


def parameters_text(params: dict[str, Any], job: dict[str, Any]) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ..., ...` as A1111 writes it, so image viewers
    and tools that read that chunk show the settings."""
    fields: list[tuple[str, Any]] = [
        ("Steps", params.get("steps")),
        ("Sampler", params.get("sampler")),
        ("Schedule type", params.get("scheduler")),
        ("CFG scale", params.get("cfg")),
        ("Seed", params.get("seed")),
        ("Size", f"{params['width']}x{params['height']}" if params.get("width") and params.get("height") else None),
        ("Model", params.get("checkpoint")),
        ("Lora", f"{params['loraId']}:{params.get('loraStrength')}" if params.get("loraId") else None),
        ("ControlNet strength", params.get("controlnetStrength")),
        ("Denoising strength", params.get("denoise") if params.get("denoise") not in (None, 1, 1.0) else None),
        ("Engine", f"{job.get('engine')}/{job.get('device')}" if job.get("engine") else None),
        ("Job", job.get("id")),
    ]
    line = ", ".join(f"{k}: {v}" for k, v in fields if v is not None)
    text = params.get("prompt") or ""
    negative = params.get("negativePrompt")
    return f"{text}\nNegative prompt: {negative}\n{line}" if negative else f"{text}\n{line}"


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grey: scale down instead of letting convert() clip everything above 255.
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def finish_png(data: bytes, job: dict[str, Any]) -> bytes:
    """Re-encode the daemon's image as the pipeline's PNG. Raises JobFailedError when it is not an image
    or not the size the job asked for."""
    params = job.get("params") or {}
    try:
        with Image.open(io.BytesIO(data)) as src:
            src.load()
            img = _to_rgb8(src)
    except (UnidentifiedImageError, OSError) as exc:
        raise JobFailedError(f"The daemon's image for job {job.get('id')} is not a readable PNG ({exc}).",
                             {"jobId": job.get("id")}, code="bad_image") from None
    want = (params.get("width"), params.get("height"))
    if all(want) and img.size != want:
        raise JobFailedError(
            f"The daemon returned a {img.size[0]}x{img.size[1]} image for job {job.get('id')}; "
            f"{want[0]}x{want[1]} was asked for.", {"jobId": job.get("id"), "size": list(img.size)},
            code="bad_image")
    info = PngInfo()
    info.add_text("parameters", parameters_text(params, job))
    info.add_text("prompt", json.dumps(job.get("workflow") or {}, ensure_ascii=False))
    out = io.BytesIO()
    img.save(out, "PNG", pnginfo=info)
    return out.getvalue()
