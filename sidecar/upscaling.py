"""The print upscale as part of a job's workflow graph: three API-format nodes after the image.

    VAEDecode ──► SaveImage                       (the job's image, at the generation size)
        └──────► ImageUpscaleWithModel ──► SaveImage   (the upscaled copy: `plasma-sidecar/upscaled`)
                     ▲
    UpscaleModelLoader (model_name, a file of models/upscale_models/)

These are ComfyUI's own nodes (`comfy_extras/nodes_upscale_model.py`: UpscaleModelLoader takes
`model_name` from the `upscale_models` folder and gives an UPSCALE_MODEL; ImageUpscaleWithModel takes
`upscale_model` and `image` and gives an IMAGE; recorded in tests/fixtures/upscale/), so a job's saved
`workflow.json` loads in ComfyUI's UI and reproduces both images; the embedded engine runs the same
graph (`sidecar.engine.interpreter`). The generation limits apply to the first image only: the
upscaled one is `scale` times larger by design. Pure graph code, no torch.
"""

from __future__ import annotations

from typing import Any

from sidecar.graph import Graph

FOLDER = "upscale_models"
LOADER = "UpscaleModelLoader"
UPSCALER = "ImageUpscaleWithModel"
SAVE = "SaveImage"
PREFIX = "plasma-sidecar/upscaled"


def is_upscaled_save(graph: Graph, node_id: str) -> bool:
    """A SaveImage that saves an ImageUpscaleWithModel's output."""
    source = graph.source(graph[node_id], "images")
    return source is not None and source.class_type == UPSCALER


def split_saves(graph: Graph) -> tuple[list[str], list[str]]:
    """(SaveImage nodes of the job's image, SaveImage nodes of its upscaled copy), in graph order."""
    saves = graph.ids_of_type(SAVE)
    upscaled = [nid for nid in saves if is_upscaled_save(graph, nid)]
    return [nid for nid in saves if nid not in upscaled], upscaled


def model_of(graph: Graph) -> str | None:
    """The upscale model the graph's (first) upscaled SaveImage uses, if it has one."""
    for nid in split_saves(graph)[1]:
        upscaler = graph.source(graph[nid], "images")
        loader = graph.source(upscaler, "upscale_model") if upscaler is not None else None
        if loader is not None and loader.class_type == LOADER and isinstance(loader.inputs.get("model_name"), str):
            return loader.inputs["model_name"]
    return None


UPSCALE_ONLY = "upscale"  # the template name a job that only upscales an image records


def upscale_only(image: str, model: str) -> dict[str, Any]:
    """The graph of a job that only upscales an image it is given (a page version already rendered): a
    LoadImage of the daemon's stored copy, the two nodes, and the SaveImage of the result."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}, "_meta": {"title": "Load Image"}},
        "2": {"class_type": LOADER, "inputs": {"model_name": model}, "_meta": {"title": "Load Upscale Model"}},
        "3": {"class_type": UPSCALER, "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
              "_meta": {"title": "Upscale Image (using Model)"}},
        "4": {"class_type": SAVE, "inputs": {"filename_prefix": PREFIX, "images": ["3", 0]},
              "_meta": {"title": "Save Image (print)"}},
    }


def _next_ids(raw: dict[str, Any], count: int) -> list[str]:
    # ComfyUI's UI exports numeric ids; new nodes continue the numbering.
    top = max((int(k) for k in raw if k.isdigit()), default=0)
    return [str(top + 1 + i) for i in range(count)]


def with_upscale(workflow: dict[str, Any], model: str) -> dict[str, Any]:
    """A copy of `workflow` that also saves its image upscaled by `model`. A graph that already has an
    upscale step gets that step's model set instead (so adding it twice is adding it once)."""
    graph = Graph(workflow)
    images, upscaled = split_saves(graph)
    if upscaled:
        changes = {}
        for nid in upscaled:
            upscaler = graph.source(graph[nid], "images")
            loader = graph.source(upscaler, "upscale_model") if upscaler is not None else None
            if loader is not None and loader.class_type == LOADER:
                changes[loader.id] = {"model_name": model}
        return graph.with_inputs(changes).raw
    if len(images) != 1 or graph[images[0]].link("images") is None:
        raise ValueError(f"an upscale step needs exactly one SaveImage of a linked image; found {len(images)}")
    loader_id, upscaler_id, save_id = _next_ids(workflow, 3)
    source = list(graph[images[0]].link("images"))  # type: ignore[arg-type]
    return {
        **workflow,
        loader_id: {"class_type": LOADER, "inputs": {"model_name": model}, "_meta": {"title": "Load Upscale Model"}},
        upscaler_id: {"class_type": UPSCALER, "inputs": {"upscale_model": [loader_id, 0], "image": source},
                      "_meta": {"title": "Upscale Image (using Model)"}},
        save_id: {"class_type": SAVE, "inputs": {"filename_prefix": PREFIX, "images": [upscaler_id, 0]},
                  "_meta": {"title": "Save Image (print)"}},
    }
