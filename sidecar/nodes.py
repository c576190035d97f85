"""The node types a job may use, in one place: our templates' nodes, which the embedded engine runs.

For each type: its inputs (linked from another node's output of a named type, or a literal value of
a kind) and its outputs, as ComfyUI's `/object_info` declares them for these nodes. A submitted
whole workflow is checked against this table (`check_graph`): any other node type is
`node_not_supported` naming the node, and any input that is not what the type takes (a link where a
number is needed, "abc", NaN, null, a list) is `invalid_field` naming the node and input.

Limits (steps, cfg, sizes, the profile) are not here: a literal may name the job parameter whose
limits hold for it (`param`), and the jobs layer applies them, the same for template and whole jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InvalidField, NodeNotSupported, WorkflowInvalid
from sidecar.graph import Graph, input_field, is_link


@dataclass(frozen=True)
class Linked:
    """An input fed by another node's output of this type (MODEL, CLIP, ...)."""

    type: str
    optional: bool = False


@dataclass(frozen=True)
class Value:
    """A literal input. `param`: the job parameter whose limits it obeys; `folder`: the models folder
    a name is looked up in."""

    kind: type  # int, float or str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    param: str | None = None
    folder: str | None = None


@dataclass(frozen=True)
class NodeType:
    inputs: dict[str, Linked | Value]
    outputs: tuple[str, ...] = ()


MAX_SEED = 2**64 - 1  # ComfyUI's seed widget range

NODE_TYPES: dict[str, NodeType] = {
    "CheckpointLoaderSimple": NodeType(
        {"ckpt_name": Value(str, folder="checkpoints", param="checkpoint")}, ("MODEL", "CLIP", "VAE")),
    "LoraLoader": NodeType({
        "model": Linked("MODEL"), "clip": Linked("CLIP"),
        "lora_name": Value(str, folder="loras"),
        "strength_model": Value(float, param="lora_strength"),
        "strength_clip": Value(float, param="lora_strength"),
    }, ("MODEL", "CLIP")),
    # The Flux templates' LoRA loader (its LoRAs carry transformer weights): MODEL alone, as the recorded
    # object_info declares it. The embedded engine runs it too (SD 1.5 and SDXL: the LoRA's UNet weights),
    # since a user's whole workflow may hold it.
    "LoraLoaderModelOnly": NodeType({
        "model": Linked("MODEL"), "lora_name": Value(str, folder="loras"),
        "strength_model": Value(float, param="lora_strength"),
    }, ("MODEL",)),
    "ModelComputeDtype": NodeType(
        {"model": Linked("MODEL"), "dtype": Value(str, choices=("default", "fp32", "fp16", "bf16"))}, ("MODEL",)),
    # A prompt's length limit; empty is allowed, as a negative prompt may be.
    "CLIPTextEncode": NodeType({"clip": Linked("CLIP"), "text": Value(str, param="negative_prompt")},
                               ("CONDITIONING",)),
    "EmptyLatentImage": NodeType({
        "width": Value(int, 16, 16384), "height": Value(int, 16, 16384),
        "batch_size": Value(int, 1, 4096, optional=True),
    }, ("LATENT",)),
    # The image is the job's pose or init image, placed by the daemon (`poseImagePath`, `initImagePath`), never a
    # path of the workflow's (the job builder sets it).
    "LoadImage": NodeType({"image": Value(str), "upload": Value(str, optional=True)},
                          ("IMAGE", "MASK")),
    "ControlNetLoader": NodeType({"control_net_name": Value(str, folder="controlnet")}, ("CONTROL_NET",)),
    "ControlNetApplyAdvanced": NodeType({
        "positive": Linked("CONDITIONING"), "negative": Linked("CONDITIONING"),
        "control_net": Linked("CONTROL_NET"), "image": Linked("IMAGE"), "vae": Linked("VAE", optional=True),
        "strength": Value(float, param="controlnet_strength"),
        "start_percent": Value(float, 0, 1, optional=True), "end_percent": Value(float, 0, 1, optional=True),
    }, ("CONDITIONING", "CONDITIONING")),
    "KSampler": NodeType({
        "model": Linked("MODEL"), "positive": Linked("CONDITIONING"), "negative": Linked("CONDITIONING"),
        "latent_image": Linked("LATENT"),
        "seed": Value(int, 0, MAX_SEED, param="seed"), "steps": Value(int, param="steps"),
        "cfg": Value(float, param="cfg"), "sampler_name": Value(str, param="sampler"),
        "scheduler": Value(str, param="scheduler"), "denoise": Value(float, optional=True, param="denoise"),
    }, ("LATENT",)),
    "VAEDecode": NodeType({"samples": Linked("LATENT"), "vae": Linked("VAE")}, ("IMAGE",)),
    # img2img: the init image's latent, which a KSampler with denoise < 1 starts from.
    "VAEEncode": NodeType({"pixels": Linked("IMAGE"), "vae": Linked("VAE")}, ("LATENT",)),
    # Where ComfyUI writes the image is the daemon's choice, not the workflow's (the job builder sets it).
    "SaveImage": NodeType({"images": Linked("IMAGE"), "filename_prefix": Value(str, optional=True)}),
    # The print upscale (`sidecar.upscaling`): ComfyUI's own nodes, inputs and outputs as its /object_info
    # declares them (tests/fixtures/upscale/object_info-upscale.json).
    "UpscaleModelLoader": NodeType({"model_name": Value(str, folder="upscale_models", param="upscale_model")},
                                   ("UPSCALE_MODEL",)),
    "ImageUpscaleWithModel": NodeType({"upscale_model": Linked("UPSCALE_MODEL"), "image": Linked("IMAGE")},
                                      ("IMAGE",)),
    # Flux (the flux-* templates): ComfyUI's loaders for the diffusion model, the two text encoders and the
    # VAE, its guidance and its sampling shift, and the 16-channel empty latent, as the recorded
    # object_info declares them (tests/fixtures/comfyui/object_info-families.json).
    "UNETLoader": NodeType({
        "unet_name": Value(str, folder="diffusion_models", param="checkpoint"),
        "weight_dtype": Value(str, choices=("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")),
    }, ("MODEL",)),
    # The text encoders' and VAE's files are the backend's (settings flux_clip_l, flux_t5xxl, flux_vae);
    # ComfyUI's own validation names a missing one.
    "DualCLIPLoader": NodeType({
        "clip_name1": Value(str), "clip_name2": Value(str),
        "type": Value(str, choices=("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")),
        "device": Value(str, choices=("default", "cpu"), optional=True),
    }, ("CLIP",)),
    "VAELoader": NodeType({"vae_name": Value(str)}, ("VAE",)),
    "FluxGuidance": NodeType({"conditioning": Linked("CONDITIONING"), "guidance": Value(float, 0, 100)},
                             ("CONDITIONING",)),
    "ModelSamplingFlux": NodeType({
        "model": Linked("MODEL"), "max_shift": Value(float, 0, 100), "base_shift": Value(float, 0, 100),
        "width": Value(int, 16, 16384), "height": Value(int, 16, 16384),
    }, ("MODEL",)),
    "EmptySD3LatentImage": NodeType({
        "width": Value(int, 16, 16384), "height": Value(int, 16, 16384),
        "batch_size": Value(int, 1, 4096, optional=True),
    }, ("LATENT",)),
}
SUPPORTED_NODES = frozenset(NODE_TYPES)
# The nodes only Flux graphs use (its templates): checked here, run by ComfyUI; the embedded engine runs SD 1.5.
FLUX_NODES = frozenset({"UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance", "ModelSamplingFlux",
                        "EmptySD3LatentImage"})
LATENT_NODES = ("EmptyLatentImage", "EmptySD3LatentImage")  # the nodes that set an image size and batch
SAMPLER_NODES = ("KSampler",)


def node_type(graph: Graph, node_id: str) -> NodeType:
    kind = graph[node_id].class_type
    spec = NODE_TYPES.get(kind)
    if spec is None:
        raise NodeNotSupported(
            f"Node {node_id} is a {kind!r}, which this daemon does not run. Supported node types: "
            f"{', '.join(sorted(NODE_TYPES))}.",
            {"node": node_id, "classType": kind, "field": f"workflow.{node_id}.class_type",
             "supported": sorted(NODE_TYPES)})
    return spec


def _bad(node_id: str, kind: str, name: str, value: Any, wanted: str) -> InvalidField:
    shown = f"a link to node {value[0]}" if is_link(value) else repr(value)
    return InvalidField(f"Node {node_id} ({kind}) input {name!r} must be {wanted}, got {shown}.",
                        {"field": input_field(node_id, name), "node": node_id, "classType": kind, "input": name,
                         "value": value if isinstance(value, (str, int, float, bool)) or value is None else None})


def check_value(node_id: str, kind: str, name: str, spec: Value, value: Any) -> Any:
    """`value` as the literal `spec` takes, or `invalid_field` naming the node and input."""
    if spec.kind is str:
        if not isinstance(value, str):
            raise _bad(node_id, kind, name, value, "a string")
        if spec.choices and value not in spec.choices:
            raise _bad(node_id, kind, name, value, f"one of {', '.join(spec.choices)}")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.kind is int and not (number and isinstance(value, int)):
        raise _bad(node_id, kind, name, value, "a whole number")
    if spec.kind is float and not (number and math.isfinite(value)):
        raise _bad(node_id, kind, name, value, "a finite number")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise _bad(node_id, kind, name, value, f"between {spec.lo} and {spec.hi}")
    return value


def check_graph(graph: Graph) -> None:
    """Every node a supported type, every input what that type takes: links to an output of the right
    type, literals of the right kind. Unknown inputs are refused too: nothing unchecked reaches a backend."""
    for node in graph:
        spec = node_type(graph, node.id)
        for name in node.inputs:
            if name not in spec.inputs:
                raise InvalidField(
                    f"Node {node.id} ({node.class_type}) has no input {name!r}; it takes "
                    f"{', '.join(spec.inputs)}.", {"field": input_field(node.id, name), "node": node.id,
                                                   "classType": node.class_type, "input": name})
        for name, want in spec.inputs.items():
            if name not in node.inputs:
                if want.optional:
                    continue
                raise InvalidField(f"Node {node.id} ({node.class_type}) needs input {name!r}.",
                                   {"field": input_field(node.id, name), "node": node.id,
                                    "classType": node.class_type, "input": name})
            value = node.inputs[name]
            if isinstance(want, Value):
                check_value(node.id, node.class_type, name, want, value)
                continue
            if not is_link(value):
                raise _bad(node.id, node.class_type, name, value, f"a link to a {want.type} output")
            source = graph[value[0]]
            outputs = node_type(graph, source.id).outputs
            got = outputs[value[1]] if 0 <= value[1] < len(outputs) else None
            if got != want.type:
                raise WorkflowInvalid(
                    f"Node {node.id} ({node.class_type}) input {name!r} needs a {want.type} output; it links to "
                    f"output {value[1]} of node {source.id} ({source.class_type}), which is "
                    f"{got or 'not an output'}.",
                    {"field": input_field(node.id, name), "node": node.id, "input": name, "link": value})
