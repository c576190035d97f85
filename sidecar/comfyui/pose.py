"""Getting a job's pose and init images to where ComfyUI's LoadImage finds them, content-hashed.

Copied into `<comfyui_dir>/input/` when the daemon knows that dir (ComfyUI sees a copied file at once),
else uploaded with `/upload/image` (`overwrite=true`) and the name ComfyUI returns is used. The hashed
name means two different images never collide and the same image is stored once. The init image is
already a hashed file in the daemon's input folder (`sidecar.inputs`) and keeps its name.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from sidecar import atomic
from sidecar.comfyui.client import ComfyClient
from sidecar.graph import Graph
from sidecar.inputs import is_ours


def hashed_name(data: bytes, suffix: str) -> str:
    return f"sidecar-pose-{hashlib.sha256(data).hexdigest()[:20]}{suffix.lower() or '.png'}"


def copy_into_input(src: Path, input_dir: Path, name: str | None = None) -> str:
    """Blocking: run in a thread. Returns the name LoadImage takes (`name`, or one hashed from the bytes)."""
    data = src.read_bytes()
    name = name or hashed_name(data, src.suffix)
    dest = input_dir / name
    if not dest.exists():  # same name means same bytes
        atomic.write_bytes(dest, data)
    return name


async def place_pose(client: ComfyClient, src: Path, comfyui_dir: Path | None, name: str | None = None) -> str:
    """Make `src` loadable by ComfyUI; returns the value for LoadImage's `image` input."""
    if comfyui_dir is not None:
        return await asyncio.to_thread(copy_into_input, src, comfyui_dir / "input", name)
    data = await asyncio.to_thread(src.read_bytes)
    answer = await client.upload_image(data, name or hashed_name(data, src.suffix), overwrite=True)
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


async def place_inputs(client: ComfyClient, workflow: dict[str, Any], local_dir: Path,
                       comfyui_dir: Path | None) -> dict[str, Any]:
    """The workflow with every LoadImage of a file the daemon prepared (an init image in `local_dir`)
    made loadable by ComfyUI, renamed where an upload answered another name."""
    graph = Graph(workflow)
    changes: dict[str, dict[str, Any]] = {}
    for node in graph.of_type("LoadImage"):
        name = node.inputs.get("image")
        if not is_ours(name) or not (local_dir / name).is_file():
            continue
        placed = await place_pose(client, local_dir / name, comfyui_dir, name)
        if placed != name:
            changes[node.id] = {"image": placed}
    return graph.with_inputs(changes).raw if changes else workflow
