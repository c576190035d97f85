"""A live preview as the daemon hands it on: a small JPEG (at most 256 px on its longer side).

A leaf both engines and the job layer share: the embedded engine makes its previews at this size,
ComfyUI's (341x512 from `latent2rgb`, or a PNG) are re-encoded to it before they go out in a
`job.preview` event.
"""

from __future__ import annotations

import io

from PIL import Image

MAX_SIDE = 256  # a preview is a glance, not the image: small enough to send in every event
QUALITY = 80
MAX_INPUT_BYTES = 16 * 1024 * 1024  # a backend's preview frame larger than this is not a preview
MAX_INPUT_PIXELS = 4096 * 4096


def small_jpeg(image: Image.Image, max_side: int = MAX_SIDE) -> tuple[bytes, int, int]:
    """The image scaled to fit `max_side` (up or down) as a JPEG: (bytes, width, height)."""
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue(), size[0], size[1]


def shrink(data: bytes, max_side: int = MAX_SIDE) -> tuple[bytes, int, int] | None:
    """Blocking: an image file (JPEG, PNG) as a small JPEG; None when it is not a decodable image."""
    if len(data) > MAX_INPUT_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                return None
            img.load()
            if max(img.size) <= max_side and img.format == "JPEG" and img.mode == "RGB":
                return data, img.width, img.height  # already a small JPEG: as it came
            return small_jpeg(img, max_side)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
