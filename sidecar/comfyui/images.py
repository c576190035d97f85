"""A finished prompt's image: which output it is, fetching it with `/view`, and writing it to our disk.

A fully black (or NaN) image is a failed job, not a result: the fp16 VAE on Apple MPS produces exactly
that, and an artist must never find it on a page. Files are written to a temp name and renamed.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sidecar import atomic
from sidecar.comfyui.client import ComfyClient
from sidecar.errors import JobFailed
from sidecar.graph import Graph
from sidecar.upscaling import split_saves


def pick_image(outputs: dict[str, Any], workflow: dict[str, Any]) -> dict[str, Any] | None:
    """The image the job is about: a SaveImage node's first saved image (the template's output node;
    never the print upscale's copy), else any saved image, else a preview."""
    save_nodes, upscaled = split_saves(Graph(workflow))
    if not save_nodes:  # a job that only upscales: its image is the upscaled one
        save_nodes, upscaled = upscaled, []
    candidates = [*save_nodes, *sorted(n for n in outputs if n not in save_nodes and n not in upscaled)]
    for kind in ("output", None):
        for node_id in candidates:
            for image in (outputs.get(node_id) or {}).get("images") or []:
                if kind is None or image.get("type", "output") == kind:
                    return image
    return None


async def fetch_image(client: ComfyClient, outputs: dict[str, Any], workflow: dict[str, Any],
                      output_path: Path) -> dict[str, Any]:
    """Download the job's image into `output_path`; returns ComfyUI's `{filename, subfolder, type}`."""
    image = pick_image(outputs, workflow)
    if image is None:
        raise JobFailed("ComfyUI finished the prompt but it produced no image.",
                        {"outputs": outputs}, code="execution_error")
    data = await client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
    await asyncio.to_thread(write_checked_image, data, output_path, image)
    return image


async def fetch_upscaled(client: ComfyClient, outputs: dict[str, Any], workflow: dict[str, Any],
                         output_path: Path) -> dict[str, Any] | None:
    """Download the print upscale's image (`sidecar.upscaling`) into `output_path`; None when the workflow
    has no upscale step. An upscale step that saved nothing is a failed job, as a missing image is."""
    images, upscaled = split_saves(Graph(workflow))
    if not upscaled or not images:  # none, or it is the job's own image (a job that only upscales)
        return None
    image = next((img for nid in upscaled for img in (outputs.get(nid) or {}).get("images") or []
                  if img.get("type", "output") == "output"), None)
    if image is None:
        raise JobFailed("ComfyUI finished the prompt but its upscale step saved no image.",
                        {"outputs": outputs, "nodes": upscaled}, code="execution_error")
    data = await client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
    await asyncio.to_thread(write_checked_image, data, output_path, image)
    return image


def write_checked_image(data: bytes, path: Path, source: dict[str, Any] | None = None) -> None:
    """Refuse an undecodable, fully black or NaN image; otherwise write `data` atomically to `path`."""
    details = {"comfyui_file": source or {}}
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # chunk CRCs, without decoding pixels
        blank = png_is_black(data)
        if blank is None:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                blank = is_black_or_nan(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as exc:
        raise JobFailed(f"ComfyUI returned an image that cannot be decoded ({exc}).",
                        details, code="execution_error") from None
    if blank:
        raise JobFailed(
            "ComfyUI produced a fully black image. On Apple MPS the fp16 VAE does this: run ComfyUI with "
            "--fp32-vae (the daemon's managed mode does).",
            details, code="black_image",
        )
    atomic.write_bytes(path, data, sync=True)


def png_is_black(data: bytes) -> bool | None:
    """Whether an 8-bit RGB or grey, non-interlaced PNG (what ComfyUI's SaveImage writes) is all zeros;
    None for any other kind of file (the caller decodes it fully).

    Decoding a 512x768 PNG costs 3-5 ms per job, but proving an image is not black takes one non-zero
    byte. PNG filters (None, Sub, Up, Average, Paeth) predict zero from zero neighbours, so the pixels
    are all zero exactly when every filtered byte except the per-row filter type is zero: inflate the
    image data piece by piece and stop at the first non-zero one.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, chunks, header = 8, [], None
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not chunks:
        return None
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3}.get(colour)
    if depth != 8 or channels is None or interlace:
        return None
    row = 1 + width * channels
    inflater = zlib.decompressobj()
    stream = b"".join(chunks)
    pending = b""
    rows_seen = 0
    while rows_seen < height:
        if stream:
            piece = inflater.decompress(stream, 1 << 16)
            stream = inflater.unconsumed_tail
        else:
            piece = inflater.flush()  # whatever zlib still holds once all input is in
            if not piece:
                break
        pending += piece
        whole = len(pending) // row
        if whole:
            rows = np.frombuffer(pending[:whole * row], dtype=np.uint8).reshape(whole, row)
            if rows[:, 1:].any():
                return False
            rows_seen += whole
            pending = pending[whole * row:]
    if rows_seen < height:
        raise ValueError("PNG image data ends early")
    return True


def is_black_or_nan(img: Image.Image) -> bool:
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return bool(np.isnan(arr).any() or not np.any(arr))
    if img.mode.startswith("I"):
        return not np.any(np.asarray(img))
    # Colour channels only: an opaque black image still has alpha 255.
    arr = np.asarray(img.convert("RGB"))
    return arr.size == 0 or not np.any(arr)
