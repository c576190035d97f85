"""The PNG the overlay stage gets: RGB, 8 bits per channel, the requested size, with the parameters in
text chunks (`parameters`: an A1111-style summary; `prompt`: the API-format workflow JSON, so the image
alone is enough to reproduce it). No `workflow` chunk: ComfyUI reads that one as its UI graph format
(nodes and links), which we do not have; dropped on its canvas, an image with only `prompt` loads as
the API workflow it is.
"""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from pipeline_stage.errors import JobFailedError


class RenderedParams(Protocol):
    prompt: str | None
    negative_prompt: str | None
    steps: int | None
    sampler: str | None
    scheduler: str | None
    cfg: float | None
    seed: int | None
    width: int | None
    height: int | None
    checkpoint: str | None
    lora_id: str | None
    lora_strength: float | None
    controlnet_strength: float | None
    denoise: float | None
    upscale_model: str | None


class Rendered(Protocol):
    """What the PNG's text chunks need of a finished job (the daemon's job record, or the API's `Job`)."""

    @property
    def id(self) -> str: ...
    @property
    def params(self) -> RenderedParams: ...
    @property
    def engine(self) -> str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def workflow(self) -> dict[str, Any]: ...


def parameters_text(job: Rendered) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ..., ...` as A1111 writes it, so image viewers
    and tools that read that chunk show the settings."""
    params = job.params
    fields: list[tuple[str, Any]] = [
        ("Steps", params.steps),
        ("Sampler", params.sampler),
        ("Schedule type", params.scheduler),
        ("CFG scale", params.cfg),
        ("Seed", params.seed),
        ("Size", f"{params.width}x{params.height}" if params.width and params.height else None),
        ("Model", params.checkpoint),
        ("Lora", f"{params.lora_id}:{params.lora_strength}" if params.lora_id else None),
        ("ControlNet strength", params.controlnet_strength),
        ("Denoising strength", params.denoise if params.denoise not in (None, 1, 1.0) else None),
        ("Engine", f"{job.engine}/{job.device}" if job.engine else None),
        ("Upscaler", params.upscale_model),
        ("Job", job.id),
    ]
    line = ", ".join(f"{k}: {v}" for k, v in fields if v is not None)
    text = params.prompt or ""
    negative = params.negative_prompt
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


def finish_png(data: bytes, job: Rendered, *, upscaled: bool = False) -> bytes:
    """Re-encode a job's image as the pipeline's PNG. Raises JobFailedError when it is not an image
    or not the size the job asked for (`upscaled`: the print upscale, a whole multiple of that size)."""
    try:
        with Image.open(io.BytesIO(data)) as src:
            src.load()
            img = _to_rgb8(src)
    except (UnidentifiedImageError, OSError) as exc:
        raise JobFailedError(f"The daemon's image for job {job.id} is not a readable PNG ({exc}).",
                             {"jobId": job.id}, code="bad_image") from None
    want = (job.params.width, job.params.height)
    if upscaled and all(want) and img.size[0] % want[0] == 0 and img.size[0] // want[0] >= 1:
        want = (img.size[0], want[1] * (img.size[0] // want[0]))  # the model's scale, the same on both sides
    if all(want) and img.size != want:
        raise JobFailedError(
            f"The daemon returned a {img.size[0]}x{img.size[1]} image for job {job.id}; "
            f"{want[0]}x{want[1]} was asked for.", {"jobId": job.id, "size": list(img.size)},
            code="bad_image")
    info = PngInfo()
    info.add_text("parameters", parameters_text(job))
    info.add_text("prompt", json.dumps(job.workflow or {}, ensure_ascii=False))
    out = io.BytesIO()
    img.save(out, "PNG", pnginfo=info)
    return out.getvalue()
