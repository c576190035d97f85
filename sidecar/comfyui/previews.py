"""ComfyUI's binary WebSocket frames: the live previews a sampler sends (with `--preview-method`).

Every binary frame starts with a big-endian uint32 event type (ComfyUI's `server.py`, recorded in
`shared/fixtures/comfyui/ws-transcript-txt2img-previews-*.json`):

- 1, PREVIEW_IMAGE (the legacy form): a uint32 image format (1 JPEG, 2 PNG), then the image file. It
  names no prompt: it belongs to the prompt whose `progress` came just before it.
- 4, PREVIEW_IMAGE_WITH_METADATA (to a client that sent the `feature_flags` handshake with
  `supports_preview_metadata`): a uint32 length L, L bytes of JSON (`prompt_id`, `node_id`,
  `image_type` ...), then the image file. It comes before that step's `progress`.

Anything else (3, progress text; unknown types; a frame cut short) is not a preview: `None`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
FORMATS = {1: "image/jpeg", 2: "image/png"}
# Sent as the first text frame: ComfyUI then sends type 4 (which names the prompt) instead of type 1.
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
MAX_METADATA = 64 * 1024


@dataclass(frozen=True)
class PreviewFrame:
    image: bytes  # the image file (JPEG or PNG)
    mime: str
    prompt_id: str | None = None  # only in the metadata form
    node_id: str | None = None


def decode_frame(data: bytes) -> PreviewFrame | None:
    if len(data) < 8:
        return None
    kind, word = struct.unpack(">II", data[:8])
    if kind == PREVIEW_IMAGE:
        mime = FORMATS.get(word)
        return PreviewFrame(data[8:], mime) if mime and len(data) > 8 else None
    if kind == PREVIEW_IMAGE_WITH_METADATA:
        if word > MAX_METADATA or len(data) <= 8 + word:
            return None
        try:
            meta = json.loads(data[8:8 + word])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        image = data[8 + word:]
        mime = meta.get("image_type") if meta.get("image_type") in FORMATS.values() else _sniff(image)
        if mime is None:
            return None
        prompt = meta.get("prompt_id")
        node = meta.get("node_id")
        return PreviewFrame(image, mime, str(prompt) if prompt is not None else None,
                            str(node) if node is not None else None)
    return None


def _sniff(image: bytes) -> str | None:
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image.startswith(b"\x89PNG"):
        return "image/png"
    return None
