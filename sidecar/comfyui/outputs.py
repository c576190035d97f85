"""The copies ComfyUI keeps in its `output/` folder of the images our jobs saved: removed once fetched.

The daemon keeps its own copy of every job's image (and the pipeline copies approved pages into the
artist's project), so ComfyUI's is a duplicate that grows without bound. ComfyUI has no API to delete
a file (`/view` only reads), so this needs its folder: managed mode, or `comfyui_dir` set beside
`comfyui_url`. Only the files our prompt's history names are removed, and only inside `output/`.

Each job's SaveImage prefix gets the job's id when copies are removed: ComfyUI answers an identical
prompt from its cache with the *earlier* file names (no new file is written), which would point at a
file already removed; a different prefix makes the SaveImage node run again and write a new file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sidecar.graph import Graph

log = logging.getLogger("sidecar.comfyui")

SAVE_NODES = ("SaveImage",)
JOB_TAG = re.compile(r"-[0-9a-f]{12}$")  # what per_job_prefix appends (a job id is 32 hex digits)


def per_job_prefix(workflow: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A copy of the workflow whose SaveImage prefixes end with the job's id (`.../txt2img-<id>`).

    A job records the graph as posted, so a reproduced workflow arrives with its source job's tag:
    that tag is replaced, not added to (`txt2img-<old>-<new>` would grow with every reproduction)."""
    graph = Graph(workflow)
    tag = job_id[:12]
    changes = {}
    for node in graph.of_type(*SAVE_NODES):
        prefix = node.inputs.get("filename_prefix", "ComfyUI")
        if isinstance(prefix, str) and not prefix.endswith(f"-{tag}"):
            changes[node.id] = {"filename_prefix": f"{JOB_TAG.sub('', prefix)}-{tag}"}
    return graph.with_inputs(changes).raw


def remove_outputs(comfyui_dir: Path, outputs: dict[str, Any]) -> list[Path]:
    """Blocking (run in a thread): delete the `type: output` images a finished prompt's history lists.
    Returns the files removed; a name that would leave `output/` is ignored."""
    root = (comfyui_dir / "output").resolve()
    removed: list[Path] = []
    for node_output in outputs.values():
        for image in (node_output or {}).get("images") or [] if isinstance(node_output, dict) else []:
            if not isinstance(image, dict) or image.get("type", "output") != "output":
                continue
            path = (root / str(image.get("subfolder") or "") / str(image.get("filename") or "")).resolve()
            if path == root or not path.is_relative_to(root):
                log.warning("not removing %s: outside ComfyUI's output folder", path)
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:  # a permission problem: the job already has its image, keep going
                log.warning("cannot remove ComfyUI's copy %s: %s", path, exc)
                continue
            removed.append(path)
    return removed
