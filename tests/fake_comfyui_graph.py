"""What the fake ComfyUI does with a posted graph: validate it, order it, and key its cache.

Rebuilt from the recorded behaviour of ComfyUI 0.3.64 (`fixtures/comfyui/error-*.json`, the WS
transcripts' node order, the cached-run transcript), not from ComfyUI's code. The server half is
`fake_comfyui.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LONG_LIST = 20  # enums longer than this are reported as "(list of length N)" with input_config null


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


@dataclass
class Validation:
    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


class _MissingNode(Exception):
    pass


class GraphValidator:
    """One validation of one prompt against `object_info` (whose model enums are already current).

    `image_exists(name)` answers LoadImage's own check (names, "sub/name", "name [input]").
    """

    def __init__(self, prompt: Any, object_info: dict[str, Any], image_exists):
        self.prompt = prompt
        self.info = object_info
        self.image_exists = image_exists
        self.results: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def run(self) -> Validation:
        prompt = self.prompt
        nodes = prompt.items() if isinstance(prompt, dict) else []
        for node_id, node in nodes:
            if not isinstance(node, dict) or "class_type" not in node:
                return Validation(False, error("invalid_prompt", "Cannot execute because a node is missing the "
                                                                 "class_type property.", f"Node ID '#{node_id}'"))
            if node["class_type"] not in self.info:
                return Validation(False, error("invalid_prompt", f"Cannot execute because node "
                                                                 f"{node['class_type']} does not exist.",
                                               f"Node ID '#{node_id}'"))
        outputs = [nid for nid, node in nodes if self.info[node["class_type"]].get("output_node")]
        if not outputs:
            return Validation(False, error("prompt_no_outputs", "Prompt has no outputs"))
        good: list[str] = []
        node_errors: dict[str, Any] = {}
        for out in outputs:
            try:
                ok = self._node(out)
            except _MissingNode as exc:
                ok = False
                self.results[out] = (False, [error("exception_during_validation", "Exception when validating node",
                                                   str(exc))])
            if ok:
                good.append(out)
                continue
            for node_id, (node_ok, reasons) in self.results.items():
                if node_ok or not reasons:
                    continue
                entry = node_errors.setdefault(node_id, {"errors": reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                if out not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(out)
        if node_errors or not good:
            return Validation(False, error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
                              node_errors)
        return Validation(True, outputs=good)

    def _node(self, node_id: str) -> bool:
        if node_id in self.results:
            return self.results[node_id][0]
        node = self.prompt[node_id]
        spec = self.info[node["class_type"]]
        required = spec["input"].get("required", {})
        optional = spec["input"].get("optional", {})
        inputs = node.get("inputs", {})
        reasons: list[dict[str, Any]] = []
        ok = True
        for name, config in {**required, **optional}.items():
            if name not in inputs:
                if name in required:
                    reasons.append(error("required_input_missing", "Required input is missing", name,
                                         input_name=name))
                continue
            value = inputs[name]
            kind = config[0]
            options = config[1] if len(config) > 1 else {}
            if is_link(value):
                source_id = value[0]
                if source_id not in self.prompt:
                    raise _MissingNode(repr(source_id))
                source = self.info[self.prompt[source_id]["class_type"]]
                produced = source["output"][value[1]] if value[1] < len(source["output"]) else None
                if isinstance(kind, str) and produced not in (kind, "*") and kind != "*":
                    reasons.append(error("return_type_mismatch", "Return type mismatch between linked nodes",
                                         f"{name}, received_type({produced}) mismatch input_type({kind})",
                                         input_name=name, input_config=config, received_type=produced,
                                         linked_node=value))
                    continue
                try:
                    if not self._node(source_id):
                        ok = False
                except _MissingNode as exc:
                    # Recorded quirk: the error is filed under the linked node, with this input's info.
                    ok = False
                    self.results[source_id] = (False, [error(
                        "exception_during_inner_validation", "Exception when validating inner node", str(exc),
                        input_name=name, input_config=config, exception_message=str(exc),
                        exception_type="KeyError", traceback=[], linked_node=value)])
                continue
            if node["class_type"] in ("LoadImage", "LoadImageMask") and name == "image":
                if not self.image_exists(str(value)):
                    reasons.append(error("custom_validation_failed", "Custom validation failed for node",
                                         f"image - Invalid image file: {value}", input_name="image"))
                continue
            reason = _check_value(name, value, kind, options, config)
            if reason is not None:
                reasons.append(reason)
        self.results[node_id] = (ok and not reasons, reasons)
        return ok and not reasons


def _check_value(name: str, value: Any, kind: Any, options: dict[str, Any], config: list[Any]) -> dict | None:
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    if isinstance(kind, str) and kind in converters:
        try:
            value = converters[kind](value)
        except (TypeError, ValueError) as exc:
            return error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                         f"{name}, {value}, {exc}", input_name=name, input_config=config,
                         received_value=value, exception_message=str(exc))
        if "min" in options and value < options["min"]:
            return error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name,
                         input_name=name, input_config=config, received_value=value)
        if "max" in options and value > options["max"]:
            return error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name,
                         input_name=name, input_config=config, received_value=value)
        return None
    if kind == "COMBO":  # the V3 form of a list input: its values are `options`
        kind = options.get("options", [])
    if isinstance(kind, list) and value not in kind:
        long = len(kind) > LONG_LIST
        listed = f"(list of length {len(kind)})" if long else str(kind)
        return error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                     input_name=name, input_config=None if long else config, received_value=value)
    return None


def execution_order(prompt: dict[str, Any], outputs: list[str], cached: set[str],
                    object_info: dict[str, Any]) -> list[str]:
    """The order ComfyUI ran nodes in the recordings (1, 5, 2, 4, 3, 6, 7, 8 for txt2img; 10, 11, 12,
    13, 14, 6, 7, 8 for img2img after a txt2img): nodes are staged depth-first from the outputs with
    a stack; among the ready ones an output node goes first, then a node feeding an output (one or two
    links away), else the first staged."""
    staged: dict[str, None] = {}
    deps: dict[str, set[str]] = {}
    for out in outputs:
        stack = [] if out in cached else [out]
        while stack:
            node_id = stack.pop()
            if node_id in staged:
                continue
            staged[node_id] = None
            deps[node_id] = set()
            for value in prompt[node_id].get("inputs", {}).values():
                if is_link(value) and value[0] not in cached:
                    stack.append(value[0])
                    deps[node_id].add(value[0])
    feeds: dict[str, set[str]] = {n: {m for m in staged if n in deps[m]} for n in staged}

    def is_output(node_id: str) -> bool:
        return bool(object_info[prompt[node_id]["class_type"]].get("output_node"))

    order: list[str] = []
    while staged:
        ready = [n for n in staged if not (deps[n] - set(order))]
        pick = (next((n for n in ready if is_output(n)), None)
                or next((n for n in ready if any(is_output(m) for m in feeds[n])), None)
                or next((n for n in ready if any(is_output(k) for m in feeds[n] for k in feeds[m])), None)
                or ready[0])
        order.append(pick)
        del staged[pick]
    return order


def signatures(prompt: dict[str, Any], file_stamp) -> dict[str, str]:
    """A cache key per node: its class and inputs, with links replaced by the linked node's key, so a
    changed input re-runs exactly the nodes downstream of it. `file_stamp(name)` keys LoadImage files."""
    keys: dict[str, str] = {}

    def key(node_id: str) -> str:
        if node_id not in keys:
            node = prompt[node_id]
            inputs = {}
            for name, value in sorted(node.get("inputs", {}).items()):
                inputs[name] = ["link", key(value[0]), value[1]] if is_link(value) else value
            if node["class_type"] in ("LoadImage", "LoadImageMask"):
                inputs["__file"] = file_stamp(str(node.get("inputs", {}).get("image")))
            keys[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
        return keys[node_id]

    for node_id in prompt:
        key(node_id)
    return keys


def upstream(prompt: dict[str, Any], node_id: str) -> list[str]:
    """Every node `node_id` depends on, nearest first."""
    seen: list[str] = []
    queue = [node_id]
    while queue:
        current = queue.pop(0)
        for value in prompt[current].get("inputs", {}).values():
            if is_link(value) and value[0] not in seen and value[0] in prompt:
                seen.append(value[0])
                queue.append(value[0])
    return seen


def resolve_loaded(node: dict[str, Any], input_dir: Path) -> Path:
    return input_dir / str(node["inputs"]["image"]).removesuffix(" [input]")


def image_size(prompt: dict[str, Any], save_node: str, input_dir: Path,
               upscale: int = 4) -> tuple[int, int, int]:
    """(width, height, batch) of what a SaveImage node receives: the EmptyLatentImage size, or for
    img2img the size of the loaded image; `upscale` times that after an ImageUpscaleWithModel."""
    from PIL import Image

    nodes = upstream(prompt, save_node)
    if any(prompt[n]["class_type"] == "ImageUpscaleWithModel" for n in nodes):
        upscaler = next(n for n in nodes if prompt[n]["class_type"] == "ImageUpscaleWithModel")
        src = prompt[upscaler]["inputs"].get("image")
        if is_link(src) and prompt.get(src[0], {}).get("class_type") == "LoadImage":  # upscaling a given image
            with Image.open(resolve_loaded(prompt[src[0]], input_dir)) as img:
                return img.width * upscale, img.height * upscale, 1
        width, height, batch = image_size(prompt, upscaler, input_dir)
        return width * upscale, height * upscale, batch
    for node_id in nodes:
        node = prompt[node_id]
        inputs = node.get("inputs", {})
        if node["class_type"] == "EmptyLatentImage":
            return int(inputs.get("width", 512)), int(inputs.get("height", 512)), int(inputs.get("batch_size", 1))
        if node["class_type"] == "VAEEncode":
            src = inputs.get("pixels")
            if is_link(src) and prompt.get(src[0], {}).get("class_type") == "LoadImage":
                try:
                    with Image.open(resolve_loaded(prompt[src[0]], input_dir)) as img:
                        return img.width, img.height, 1
                except OSError:
                    break
    return 64, 64, 1
