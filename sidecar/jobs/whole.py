"""A whole submitted workflow, held to what a template job is held to, and its params read off it.

Checked in order: the structure and size (`Graph.parse`), every node and input against the supported
node types (`sidecar.nodes.check_graph`), every value that is a job parameter against that
parameter's limits (steps, cfg, denoise, strengths: `sidecar.jobs.params`), every latent's size and
batch against the profile. The job's params are then read off the checked graph (the sampler that
feeds the image, the prompts that feed it, the latent, the models), never copied from unchecked input.
Model lookups, the pose image and the SaveImage prefix are the builder's (they need the backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import SidecarError
from sidecar.graph import Graph, Node, input_field
from sidecar.jobs.params import JobParams, LoraUse, check_param
from sidecar.nodes import LATENT_NODES, NODE_TYPES, Value, check_graph
from sidecar.profiles import Profile
from sidecar.upscaling import model_of, split_saves

# Where a value travels through a node unchanged: (class type, the input it comes from) by output type.
PASS_THROUGH: dict[str, dict[str, str]] = {
    "MODEL": {"LoraLoader": "model", "LoraLoaderModelOnly": "model", "ModelComputeDtype": "model",
              "ModelSamplingFlux": "model"},
    "CLIP": {"LoraLoader": "clip"},
    "LATENT": {"KSampler": "latent_image"},
}


@dataclass
class WholeWorkflow:
    graph: Graph
    params: JobParams
    loaders: list[str] = field(default_factory=list)  # LoadImage node ids (the pose image goes there)
    init_loaders: list[str] = field(default_factory=list)  # LoadImage node ids a VAEEncode encodes (init image)
    outputs: list[str] = field(default_factory=list)  # SaveImage node ids: the image's first, then the upscaled
    models: list[tuple[str, str, str]] = field(default_factory=list)  # (input field, models folder, file name)
    controlnets: int = 0


def _named(exc: SidecarError, node: Node, name: str) -> SidecarError:
    """A profile error raised for a value of `node`: say which node and input it came from."""
    exc.details.update(node=node.id, input=name, field=input_field(node.id, name))
    exc.message = f"Node {node.id} ({node.class_type}): {exc.message}"
    exc.args = (exc.message,)
    return exc


def check_limits(graph: Graph, profile: Profile) -> None:
    """Every parameter-like value within the job limits; every latent within the profile."""
    for node in graph:
        spec = NODE_TYPES[node.class_type]
        for name, want in spec.inputs.items():
            if isinstance(want, Value) and want.param and name in node.inputs:
                check_param(want.param, node.inputs[name], input_field(node.id, name),
                            {"node": node.id, "classType": node.class_type, "input": name})
        if node.class_type in LATENT_NODES:
            width, height = node.inputs["width"], node.inputs["height"]
            try:
                profile.check_resolution(width, height)
            except SidecarError as exc:
                raise _named(exc, node, "width" if width > profile.max_width or width % 8 else "height") from None
            try:
                profile.check_batch(node.inputs.get("batch_size", 1))
            except SidecarError as exc:
                raise _named(exc, node, "batch_size") from None


def upstream(graph: Graph, node: Node, name: str, wanted: str, kind: str) -> tuple[Node | None, list[Node]]:
    """Follow `node`'s input `name` back through pass-through nodes to a `wanted` node; returns it
    (or None) and the nodes passed on the way. Iterative: a 1,500-LoRA chain is a loop, not recursion."""
    passed: list[Node] = []
    current = graph.source(node, name)
    seen: set[str] = set()
    while current is not None and current.class_type != wanted and current.id not in seen:
        seen.add(current.id)
        via = PASS_THROUGH.get(kind, {}).get(current.class_type)
        if via is None:
            return None, passed
        passed.append(current)
        current = graph.source(current, via)
    return (current if current is not None and current.class_type == wanted else None), passed


def _prompt(graph: Graph, sampler: Node, name: str) -> tuple[str | None, float | None]:
    """The text encoded for the sampler's `positive`/`negative`, through ControlNet apply nodes (whose
    output 0 carries their positive input and output 1 their negative)."""
    link, strength = sampler.link(name), None
    source = graph.get(link[0]) if link else None
    seen: set[str] = set()
    while source is not None and source.class_type in ("ControlNetApplyAdvanced", "FluxGuidance") \
            and source.id not in seen:
        seen.add(source.id)
        if source.class_type == "FluxGuidance":  # Flux: the guidance wraps the positive prompt's conditioning
            link = source.link("conditioning")
        else:
            strength = source.inputs.get("strength") if strength is None else strength
            link = source.link(("positive", "negative")[link[1]] if link and link[1] in (0, 1) else "positive")
        source = graph.get(link[0]) if link else None
    text = source.inputs.get("text") if source is not None and source.class_type == "CLIPTextEncode" else None
    return text, strength


def read_params(graph: Graph, outputs: list[str]) -> JobParams:
    """The params of the sampler whose image the (first) SaveImage saves, and the print upscale's model."""
    values: dict[str, Any] = {"upscale_model": model_of(graph)}
    decode = graph.source(graph[outputs[0]], "images") if outputs else None
    sampler = graph.source(decode, "samples") if decode is not None else None
    if sampler is None or sampler.class_type != "KSampler":
        return JobParams(upscale_model=values["upscale_model"])
    i = sampler.inputs
    values.update(seed=i["seed"], steps=i["steps"], cfg=i["cfg"], sampler=i["sampler_name"],
                  scheduler=i["scheduler"], denoise=i.get("denoise", 1.0))
    values["prompt"], values["controlnet_strength"] = _prompt(graph, sampler, "positive")
    values["negative_prompt"], _ = _prompt(graph, sampler, "negative")
    for kind in LATENT_NODES:
        latent, _ = upstream(graph, sampler, "latent_image", kind, "LATENT")
        if latent is not None:
            values.update(width=latent.inputs["width"], height=latent.inputs["height"])
    for kind, field in (("CheckpointLoaderSimple", "ckpt_name"), ("UNETLoader", "unet_name")):
        loader, passed = upstream(graph, sampler, "model", kind, "MODEL")
        if loader is not None:
            values["checkpoint"] = loader.inputs[field]
            break
    loras = [n for n in reversed(passed) if n.class_type in ("LoraLoader", "LoraLoaderModelOnly")]
    if loras:  # the first applied is the one-LoRA form; `loras` lists every one in the order applied
        values.update(lora_id=Path(loras[0].inputs["lora_name"]).stem, lora_strength=loras[0].inputs["strength_model"],
                      loras=[LoraUse(id=Path(n.inputs["lora_name"]).stem, strength=n.inputs["strength_model"],
                                     file=n.inputs["lora_name"]) for n in loras])
    if not values.get("prompt"):
        values["prompt"] = None
    return JobParams(**{k: v for k, v in values.items() if v is not None})


def read_whole_workflow(raw: Any, profile: Profile) -> WholeWorkflow:
    graph = Graph.parse(raw)
    check_graph(graph)
    check_limits(graph, profile)
    images, upscaled = split_saves(graph)
    outputs = images + upscaled
    models = [(input_field(node.id, name), want.folder, node.inputs[name])
              for node in graph for name, want in NODE_TYPES[node.class_type].inputs.items()
              if isinstance(want, Value) and want.folder and name in node.inputs]
    encoded = [graph.source(node, "pixels") for node in graph.of_type("VAEEncode")]
    init_loaders = sorted({n.id for n in encoded if n is not None and n.class_type == "LoadImage"})
    return WholeWorkflow(
        graph=graph, params=read_params(graph, outputs), init_loaders=init_loaders,
        loaders=[i for i in graph.ids_of_type("LoadImage") if i not in init_loaders], outputs=outputs,
        models=models, controlnets=len(graph.ids_of_type("ControlNetLoader")))
