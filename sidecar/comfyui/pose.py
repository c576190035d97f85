"""Getting a job's pose image to where ComfyUI's LoadImage finds it, under a content-hashed name.

Copied into `<comfyui_dir>/input/` when the daemon knows that dir (ComfyUI sees a copied file at once),
else uploaded with `/upload/image` (`overwrite=true`) and the name ComfyUI returns is used. The hashed
name means two different poses never collide and the same pose is stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from sidecar import atomic
from sidecar.comfyui.client import ComfyClient
from sidecar.graph import Graph


def hashed_name(data: bytes, suffix: str) -> str:
    return f"sidecar-pose-{hashlib.sha256(data).hexdigest()[:20]}{suffix.lower() or '.png'}"


def copy_into_input(src: Path, input_dir: Path) -> str:
    """Blocking: run in a thread. Returns the name LoadImage takes."""
    data = src.read_bytes()
    name = hashed_name(data, src.suffix)
    dest = input_dir / name
    if not dest.exists():  # same name means same bytes
        atomic.write_bytes(dest, data)
    return name


async def place_pose(client: ComfyClient, src: Path, comfyui_dir: Path | None) -> str:
    """Make `src` loadable by ComfyUI; returns the value for LoadImage's `image` input."""
    if comfyui_dir is not None:
        return await asyncio.to_thread(copy_into_input, src, comfyui_dir / "input")
    data = await asyncio.to_thread(src.read_bytes)
    answer = await client.upload_image(data, hashed_name(data, src.suffix), overwrite=True)
    # Always use the returned name: without overwrite ComfyUI may rename ("x (1).png").
    sub = answer.get("subfolder") or ""
    return f"{sub}/{answer['name']}" if sub else answer["name"]


def set_pose(workflow: dict[str, Any], local_name: str, comfy_name: str) -> dict[str, Any]:
    """A copy of the workflow whose pose LoadImage loads `comfy_name`.

    The slot filler leaves the pose slot as the local file's base name; that node is the one to change.
    A template with a single LoadImage is unambiguous even if the name differs.
    """
    graph = Graph(workflow)
    loaders = graph.of_type("LoadImage")
    targets = [n for n in loaders if n.inputs.get("image") == local_name]
    if not targets and len(loaders) == 1:
        targets = loaders
    return graph.with_inputs({node.id: {"image": comfy_name} for node in targets}).raw
