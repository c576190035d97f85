"""Several LoRAs in one job: LoraLoader nodes chained after a template's one.

    CheckpointLoaderSimple ──► LoraLoader (the template's) ──► LoraLoader ──► LoraLoader ──► ...
                                                                            (each: model, clip from the one before)

ComfyUI applies a LoRA per `LoraLoader` node (`nodes.py`: `model`, `clip`, `lora_name`, `strength_model`,
`strength_clip` in; MODEL and CLIP out), so a stack is a chain of them, as ComfyUI's UI builds it by
hand; everything that read the template's loader's outputs reads the last one's. The embedded engine
runs the same chain (`sidecar.engine.interpreter` merges each loader's LoRA). Pure graph code.
"""

from __future__ import annotations

import copy
from typing import Any

LOADER = "LoraLoader"


def _next_id(graph: dict[str, Any]) -> int:
    return max((int(k) for k in graph if str(k).isdigit()), default=0) + 1


def chain_loras(graph: dict[str, Any], first: str, more: list[tuple[str, float]]) -> dict[str, Any]:
    """A copy of `graph` with a LoraLoader per (file, strength) of `more` after node `first` (a LoraLoader)."""
    graph = copy.deepcopy(graph)
    if not more:
        return graph
    consumers = [(nid, name) for nid, node in graph.items() for name, value in node.get("inputs", {}).items()
                 if isinstance(value, list) and len(value) == 2 and value[0] == first]
    tail, new_id = first, _next_id(graph)
    for name, strength in more:
        nid = str(new_id)
        new_id += 1
        graph[nid] = {"class_type": LOADER,
                      "inputs": {"model": [tail, 0], "clip": [tail, 1], "lora_name": name,
                                 "strength_model": strength, "strength_clip": strength},
                      "_meta": {"title": "Load LoRA"}}
        tail = nid
    for nid, name in consumers:
        graph[nid]["inputs"][name] = [tail, graph[nid]["inputs"][name][1]]
    return graph
