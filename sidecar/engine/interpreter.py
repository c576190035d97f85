"""Reads a filled API-format workflow into one `RenderJob`: what to load and how to sample.

Each supported node type is a small function from its resolved inputs to symbolic outputs (which
checkpoint, which LoRAs, which prompt...), evaluated from the SaveImage node back, as ComfyUI
executes from its outputs. Nothing is loaded here, so `validate()` runs this at submit time and a
workflow the engine cannot run is refused with `node_not_supported`, `sampler_not_supported` or
`workflow_invalid` before it is queued. Pure Python: no torch import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.engine import samplers
from sidecar.errors import WorkflowInvalid
from sidecar.graph import Graph, is_link
from sidecar.nodes import MAX_SEED, node_type
from sidecar.upscaling import split_saves


@dataclass(frozen=True)
class Model:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()
    dtype: str | None = None  # from ModelComputeDtype; None = the device's default


@dataclass(frozen=True)
class Clip:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Vae:
    checkpoint: str


@dataclass(frozen=True)
class Image:
    name: str  # a LoadImage file name


@dataclass(frozen=True)
class ControlNet:
    name: str


@dataclass(frozen=True)
class Control:
    controlnet: str
    image: str
    strength: float
    start: float
    end: float


@dataclass(frozen=True)
class Conditioning:
    text: str
    clip: Clip
    controls: tuple[Control, ...] = ()


@dataclass(frozen=True)
class Latent:
    width: int  # 0 for an encoded image: its size is the image file's, known when it is loaded
    height: int
    batch: int
    init_image: str | None = None  # VAEEncode: the LoadImage file it encodes
    vae: Vae | None = None  # VAEEncode: the VAE that encodes it

@dataclass(frozen=True)
class Sampled:
    model: Model
    positive: Conditioning
    negative: Conditioning
    latent: Latent
    seed: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    denoise: float


@dataclass(frozen=True)
class Decoded:
    samples: Sampled
    vae: Vae


@dataclass(frozen=True)
class UpscaleModel:
    name: str  # a file of models/upscale_models/


@dataclass(frozen=True)
class Upscaled:
    model: str
    image: Decoded | Image  # the sampled image, or a loaded one (a job that only upscales)


@dataclass(frozen=True)
class UpscaleJob:
    """A workflow that only upscales a loaded image (`sidecar.upscaling.upscale_only`)."""

    image: str  # the LoadImage file
    model: str
    save_node: str


@dataclass(frozen=True)
class RenderJob:
    """Everything the renderer needs, flattened."""

    checkpoint: str
    unet_dtype: str | None
    loras: list[tuple[str, float, float]]  # (file, strength_model, strength_clip), merged by file
    positive: str
    negative: str
    controls_positive: tuple[Control, ...]
    controls_negative: tuple[Control, ...]
    width: int
    height: int
    seed: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    denoise: float
    save_node: str
    filename_prefix: str
    init_image: str | None = None  # img2img: the LoadImage file whose latent sampling starts from
    upscale_model: str | None = None  # the print upscale (sidecar.upscaling): also save the image upscaled
    upscale_save_node: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- input helpers

def _fail(node_id: str, message: str, **details: Any) -> WorkflowInvalid:
    return WorkflowInvalid(f"Node {node_id}: {message}", {"node": node_id, **details})


def _number(node_id: str, inputs: dict, name: str, kind: type, lo: float, hi: float, default: Any = None) -> Any:
    value = inputs.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(node_id, f"input {name!r} must be a number, got {value!r}.", input=name)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise _fail(node_id, f"input {name!r} must be a whole number, got {value!r}.", input=name)
    value = kind(value)
    if not lo <= value <= hi:
        raise _fail(node_id, f"input {name!r} must be between {lo} and {hi}, got {value}.", input=name)
    return value


def _text(node_id: str, inputs: dict, name: str) -> str:
    value = inputs.get(name)
    if not isinstance(value, str):
        raise _fail(node_id, f"input {name!r} must be a string, got {value!r}.", input=name)
    return value


# -- node functions: (node id, inputs with links resolved) -> output tuple

def _checkpoint_loader(nid: str, i: dict) -> tuple:
    name = _text(nid, i, "ckpt_name")
    return Model(name), Clip(name), Vae(name)


def _lora_loader(nid: str, i: dict) -> tuple:
    model, clip = _typed(nid, i, "model", Model), _typed(nid, i, "clip", Clip)
    name = _text(nid, i, "lora_name")
    sm = _number(nid, i, "strength_model", float, -100, 100)
    sc = _number(nid, i, "strength_clip", float, -100, 100)
    return replace(model, loras=(*model.loras, (name, sm))), replace(clip, loras=(*clip.loras, (name, sc)))


def _lora_loader_model_only(nid: str, i: dict) -> tuple:
    """ComfyUI's LoraLoaderModelOnly: the LoRA's UNet weights only (strength_model); its text-encoder
    weights, if any, are left out, as ComfyUI's node patches the model alone."""
    model = _typed(nid, i, "model", Model)
    name = _text(nid, i, "lora_name")
    return (replace(model, loras=(*model.loras, (name, _number(nid, i, "strength_model", float, -100, 100)))),)


def _compute_dtype(nid: str, i: dict) -> tuple:
    dtype = i.get("dtype")
    if dtype not in ("default", "fp32", "fp16", "bf16"):
        raise _fail(nid, f"dtype must be one of default, fp32, fp16, bf16; got {dtype!r}.", input="dtype")
    return (replace(_typed(nid, i, "model", Model), dtype=None if dtype == "default" else dtype),)


def _clip_text_encode(nid: str, i: dict) -> tuple:
    return (Conditioning(_text(nid, i, "text"), _typed(nid, i, "clip", Clip)),)


def _empty_latent(nid: str, i: dict) -> tuple:
    w = _number(nid, i, "width", int, 16, 16384)
    h = _number(nid, i, "height", int, 16, 16384)
    if w % 8 or h % 8:
        raise _fail(nid, f"width and height must be multiples of 8, got {w}x{h}.")
    return (Latent(w, h, _number(nid, i, "batch_size", int, 1, 1, default=1)),)


def _load_image(nid: str, i: dict) -> tuple:
    return Image(_text(nid, i, "image")), None  # (IMAGE, MASK); the mask is not used by our nodes


def _controlnet_loader(nid: str, i: dict) -> tuple:
    return (ControlNet(_text(nid, i, "control_net_name")),)


def _controlnet_apply_advanced(nid: str, i: dict) -> tuple:
    pos, neg = _typed(nid, i, "positive", Conditioning), _typed(nid, i, "negative", Conditioning)
    strength = _number(nid, i, "strength", float, 0, 10)
    start = _number(nid, i, "start_percent", float, 0, 1, default=0.0)
    end = _number(nid, i, "end_percent", float, 0, 1, default=1.0)
    if strength == 0:
        return pos, neg  # as ComfyUI: a zero-strength ControlNet is no ControlNet
    control = Control(_typed(nid, i, "control_net", ControlNet).name, _typed(nid, i, "image", Image).name,
                      strength, start, end)
    return replace(pos, controls=(*pos.controls, control)), replace(neg, controls=(*neg.controls, control))


def _ksampler(nid: str, i: dict) -> tuple:
    sampler, scheduler = i.get("sampler_name"), i.get("scheduler")
    samplers.check(sampler, scheduler)
    return (Sampled(
        model=_typed(nid, i, "model", Model), positive=_typed(nid, i, "positive", Conditioning),
        negative=_typed(nid, i, "negative", Conditioning), latent=_typed(nid, i, "latent_image", Latent),
        seed=_number(nid, i, "seed", int, 0, MAX_SEED), steps=_number(nid, i, "steps", int, 1, 10000),
        cfg=_number(nid, i, "cfg", float, 0, 100), sampler=sampler, scheduler=scheduler,
        denoise=_number(nid, i, "denoise", float, 0, 1, default=1.0)),)


def _vae_encode(nid: str, i: dict) -> tuple:
    image, vae = _typed(nid, i, "pixels", Image), _typed(nid, i, "vae", Vae)
    return (Latent(0, 0, 1, init_image=image.name, vae=vae),)


def _vae_decode(nid: str, i: dict) -> tuple:
    return (Decoded(_typed(nid, i, "samples", Sampled), _typed(nid, i, "vae", Vae)),)


def _save_image(nid: str, i: dict) -> tuple:
    prefix = i.get("filename_prefix", "ComfyUI")
    images = i.get("images") if isinstance(i.get("images"), Upscaled) else _typed(nid, i, "images", Decoded)
    return (images, prefix if isinstance(prefix, str) else "ComfyUI")


def _upscale_model_loader(nid: str, i: dict) -> tuple:
    return (UpscaleModel(_text(nid, i, "model_name")),)


def _image_upscale_with_model(nid: str, i: dict) -> tuple:
    image = i.get("image") if isinstance(i.get("image"), Image) else _typed(nid, i, "image", Decoded)
    return (Upscaled(_typed(nid, i, "upscale_model", UpscaleModel).name, image),)


NODES: dict[str, Callable[[str, dict], tuple]] = {
    "CheckpointLoaderSimple": _checkpoint_loader,
    "LoraLoader": _lora_loader,
    "LoraLoaderModelOnly": _lora_loader_model_only,
    "ModelComputeDtype": _compute_dtype,
    "CLIPTextEncode": _clip_text_encode,
    "EmptyLatentImage": _empty_latent,
    "LoadImage": _load_image,
    "ControlNetLoader": _controlnet_loader,
    "ControlNetApplyAdvanced": _controlnet_apply_advanced,
    "KSampler": _ksampler,
    "VAEDecode": _vae_decode,
    "VAEEncode": _vae_encode,
    "SaveImage": _save_image,
    "UpscaleModelLoader": _upscale_model_loader,
    "ImageUpscaleWithModel": _image_upscale_with_model,
}
# The node types a job may use are listed once, in sidecar.nodes; this engine runs exactly those
# (a test holds the two equal).
OUTPUT_NODE = "SaveImage"


def _typed(node_id: str, inputs: dict, name: str, kind: type) -> Any:
    value = inputs.get(name)
    if not isinstance(value, kind):
        got = type(value).__name__ if value is not None else "nothing"
        raise _fail(node_id, f"input {name!r} must be linked to a {kind.__name__.upper()} output, got {got}.",
                    input=name)
    return value


# -- evaluation

def check_node_types(workflow: dict[str, Any]) -> None:
    graph = Graph(workflow)
    for node_id in workflow:
        node_type(graph, node_id)


def _evaluate(graph: Graph, root: str) -> tuple:
    """The outputs of `root`, each node evaluated once after the nodes it links to (in the graph's
    topological order: iterative, so a long chain cannot exhaust the recursion limit)."""
    done: dict[str, tuple] = {}
    for node_id in graph.order([root]):
        node = graph[node_id]
        inputs = {}
        for name, value in node.inputs.items():
            if is_link(value):
                outs = done[value[0]]
                if not 0 <= value[1] < len(outs):
                    raise _fail(node_id, f"input {name!r} links to output {value[1]} of node {value[0]}, "
                                         f"which has {len(outs)} output(s).", input=name)
                inputs[name] = outs[value[1]]
            else:
                inputs[name] = value
        done[node_id] = NODES[node.class_type](node_id, inputs)
    return done[root]


def interpret(workflow: dict[str, Any]) -> RenderJob | UpscaleJob:
    graph = Graph.parse(workflow)
    check_node_types(workflow)
    outputs, upscaled_saves = split_saves(graph)
    if not outputs and len(upscaled_saves) == 1:
        upscaled = _evaluate(graph, upscaled_saves[0])[0]
        if isinstance(upscaled, Upscaled) and isinstance(upscaled.image, Image):
            return UpscaleJob(upscaled.image.name, upscaled.model, upscaled_saves[0])
    if len(outputs) != 1 or len(upscaled_saves) > 1:
        raise WorkflowInvalid(
            "The embedded engine runs workflows with exactly one SaveImage node of the image (and at most one of "
            f"its upscaled copy); this one has {len(outputs)} (and {len(upscaled_saves)}).",
            {"outputNodes": outputs + upscaled_saves})
    decoded, prefix = _evaluate(graph, outputs[0])
    upscale: Upscaled | None = None
    if upscaled_saves:
        upscale = _evaluate(graph, upscaled_saves[0])[0]
        if not isinstance(upscale, Upscaled) or upscale.image != decoded:
            raise WorkflowInvalid("The embedded engine upscales the image the workflow saves, not another one.",
                                  {"node": upscaled_saves[0]})
    s = decoded.samples
    checkpoints = {s.model.checkpoint, s.positive.clip.checkpoint, s.negative.clip.checkpoint, decoded.vae.checkpoint,
                   *([s.latent.vae.checkpoint] if s.latent.vae else [])}
    if len(checkpoints) != 1:
        raise WorkflowInvalid("The embedded engine runs the model, CLIP and VAE of one checkpoint per workflow; "
                              f"this one mixes {', '.join(sorted(checkpoints))}.", {"checkpoints": sorted(checkpoints)})
    if s.positive.clip != s.negative.clip:
        raise WorkflowInvalid("The embedded engine needs both prompts encoded by the same CLIP (same LoRAs).")
    if len({c.controlnet for c in s.positive.controls + s.negative.controls}) > 1:
        raise WorkflowInvalid("The embedded engine runs at most one ControlNet model per workflow.")
    merged: dict[str, list[float]] = {}
    for name, strength in s.model.loras:
        merged.setdefault(name, [0.0, 0.0])[0] += strength
    for name, strength in s.positive.clip.loras:
        merged.setdefault(name, [0.0, 0.0])[1] += strength
    return RenderJob(
        checkpoint=s.model.checkpoint, unet_dtype=s.model.dtype,
        loras=[(name, sm, sc) for name, (sm, sc) in merged.items()],
        positive=s.positive.text, negative=s.negative.text,
        controls_positive=s.positive.controls, controls_negative=s.negative.controls,
        width=s.latent.width, height=s.latent.height, seed=s.seed, steps=s.steps, cfg=s.cfg,
        sampler=s.sampler, scheduler=s.scheduler, denoise=s.denoise, save_node=outputs[0], filename_prefix=prefix,
        init_image=s.latent.init_image,
        upscale_model=upscale.model if upscale else None,
        upscale_save_node=upscaled_saves[0] if upscale else None,
    )
