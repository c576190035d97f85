"""Several LoRAs in one job: LoRA loader nodes chained after a template's one.

    CheckpointLoaderSimple ──► LoraLoader (the template's) ──► LoraLoader ──► LoraLoader ──► ...
                                                                            (each: model, clip from the one before)
    UNETLoader (Flux) ──► LoraLoaderModelOnly (the template's) ──► LoraLoaderModelOnly ──► ...
    DualCLIPLoader ───────────────────────────────────────────────► CLIPTextEncode (untouched)

ComfyUI applies a LoRA per loader node (`nodes.py`: `LoraLoader` takes `model`, `clip`, `lora_name`,
`strength_model`, `strength_clip` and gives MODEL and CLIP; `LoraLoaderModelOnly` takes `model`,
`lora_name`, `strength_model` and gives MODEL), so a stack is a chain of them, as ComfyUI's UI builds it
by hand; everything that read the template's loader's outputs reads the last one's. The chain is of the
template's loader's kind: the Flux templates use `LoraLoaderModelOnly` (see docs/families.md: Flux LoRAs
carry transformer weights; the prompts' T5 encoding stays cached in ComfyUI when only the LoRAs change).
A Flux LoRA that does carry text-encoder weights (`with_clip`) gets a `LoraLoader` in the chain instead,
its `clip` from the CLIP the prompts read, and the prompts then read its CLIP, so nothing in it is dropped.
The embedded engine runs the `LoraLoader` chain (`sidecar.engine.interpreter` merges each loader's LoRA).
Pure graph code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

LOADER = "LoraLoader"
MODEL_ONLY = "LoraLoaderModelOnly"


@dataclass(frozen=True)
class StackedLora:
    file: str
    strength: float
    with_clip: bool = False  # a model-only chain's LoRA with text-encoder weights: a LoraLoader for it


def _next_id(graph: dict[str, Any]) -> int:
    return max((int(k) for k in graph if str(k).isdigit()), default=0) + 1


def _consumers(graph: dict[str, Any], source: list[Any]) -> list[tuple[str, str]]:
    """(node id, input name) of every input linked to `source` ([node id, output index])."""
    return [(nid, name) for nid, node in graph.items() for name, value in node.get("inputs", {}).items()
            if isinstance(value, list) and len(value) == 2 and value[0] == source[0] and value[1] == source[1]]


def _clip_source(graph: dict[str, Any]) -> list[Any] | None:
    """The CLIP the prompts read in a model-only chain's graph (the first CLIPTextEncode's `clip`)."""
    for node in graph.values():
        if node.get("class_type") == "CLIPTextEncode" and isinstance(node["inputs"].get("clip"), list):
            return list(node["inputs"]["clip"])
    return None


def chain_loras(graph: dict[str, Any], first: str, more: list[tuple[str, float]]) -> dict[str, Any]:
    """A copy of `graph` with a loader per (file, strength) of `more` after node `first`, of its kind."""
    return stack_loras(graph, first, None, [StackedLora(f, s) for f, s in more])


def stack_loras(graph: dict[str, Any], first: str, first_with_clip: bool | None,
                more: list[StackedLora]) -> dict[str, Any]:
    """A copy of `graph` with `more` chained after node `first` (the template's loader, already filled).
    `first_with_clip`: a model-only `first` whose LoRA carries text-encoder weights (made a LoraLoader)."""
    graph = copy.deepcopy(graph)
    model_only = graph[first]["class_type"] == MODEL_ONLY
    if not model_only:
        return _chain_full(graph, first, more)
    model_users = _consumers(graph, [first, 0])
    clip = _clip_source(graph)
    clip_users = _consumers(graph, clip) if clip is not None else []
    clip_tail = clip
    if first_with_clip and clip is not None:
        node = graph[first]
        strength = node["inputs"]["strength_model"]
        node["class_type"], node["_meta"] = LOADER, {"title": "Load LoRA"}
        node["inputs"] = {"model": node["inputs"]["model"], "clip": clip, "lora_name": node["inputs"]["lora_name"],
                          "strength_model": strength, "strength_clip": strength}
        clip_tail = [first, 1]
    tail, new_id = first, _next_id(graph)
    for lora in more:
        nid = str(new_id)
        new_id += 1
        if lora.with_clip and clip_tail is not None:
            graph[nid] = {"class_type": LOADER, "inputs": {
                "model": [tail, 0], "clip": clip_tail, "lora_name": lora.file, "strength_model": lora.strength,
                "strength_clip": lora.strength}, "_meta": {"title": "Load LoRA"}}
            clip_tail = [nid, 1]
        else:
            graph[nid] = {"class_type": MODEL_ONLY, "inputs": {
                "model": [tail, 0], "lora_name": lora.file, "strength_model": lora.strength},
                "_meta": {"title": "LoraLoaderModelOnly"}}
        tail = nid
    for nid, name in model_users:
        graph[nid]["inputs"][name] = [tail, 0]
    if clip_tail != clip:
        for nid, name in clip_users:
            graph[nid]["inputs"][name] = list(clip_tail)  # type: ignore[arg-type]
    return graph


def _chain_full(graph: dict[str, Any], first: str, more: list[StackedLora]) -> dict[str, Any]:
    if not more:
        return graph
    consumers = [(nid, name) for nid, node in graph.items() for name, value in node.get("inputs", {}).items()
                 if isinstance(value, list) and len(value) == 2 and value[0] == first]
    tail, new_id = first, _next_id(graph)
    for lora in more:
        nid = str(new_id)
        new_id += 1
        graph[nid] = {"class_type": LOADER,
                      "inputs": {"model": [tail, 0], "clip": [tail, 1], "lora_name": lora.file,
                                 "strength_model": lora.strength, "strength_clip": lora.strength},
                      "_meta": {"title": "Load LoRA"}}
        tail = nid
    for nid, name in consumers:
        graph[nid]["inputs"][name] = [tail, graph[nid]["inputs"][name][1]]
    return graph
