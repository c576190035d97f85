"""From a `JobRequest` to a runnable job: defaults, limits, names, files, template choice, slot filling.

Everything a job is refused for is decided here, at submit time, so nothing refused ever reaches
a backend. The result is plain data the runner stores and hands to the backend.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sidecar.api.models import JobRequest
from sidecar.backend import GenerationBackend, ModelFolder
from sidecar.config import Settings
from sidecar.errors import (
    CheckpointNotFound,
    ComfyUnavailable,
    ControlnetNotFound,
    InvalidField,
    LoraNotFound,
    PoseImageInvalid,
)
from sidecar.profiles import Profile
from sidecar.workflows import TemplateStore, validate_graph

PARAM_FIELDS = (
    "prompt", "negative_prompt", "lora_id", "lora_strength", "seed", "steps", "cfg", "sampler", "scheduler",
    "resolution", "checkpoint", "pose_image_path", "controlnet_strength", "denoise",
)


@dataclass
class BuiltJob:
    params: dict[str, Any]  # camelCase, resolved (see api.models.JobParams)
    template: str | None
    workflow: dict[str, Any]
    pose_image: Path | None


def check_name(field: str, value: str) -> None:
    """Model names are bare file names: no separators, no `..`."""
    if "/" in value or "\\" in value or ".." in value or "\x00" in value or not value.strip():
        raise InvalidField(
            f"{field} must be a bare name without path separators or '..', got {value!r}.",
            {"field": field, "value": value},
        )


def choose_template(has_lora: bool, has_pose: bool) -> str:
    if has_pose:
        return "img2img-lora-controlnet" if has_lora else "img2img-controlnet"
    return "txt2img-lora" if has_lora else "txt2img"


def check_pose_image(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise PoseImageInvalid(f"poseImagePath must be an absolute path, got {raw!r}.", {"path": raw})
    if not path.is_file():
        raise PoseImageInvalid(f"poseImagePath {raw} does not exist or is not a file.", {"path": raw})
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PoseImageInvalid(
            f"poseImagePath {raw} is not a decodable image.", {"path": raw, "reason": str(exc)}
        ) from None
    return path


def find_lora_in(names: list[str], lora_id: str) -> str:
    for name in names:
        if Path(name).stem == lora_id or name == lora_id:
            return name
    raise LoraNotFound(
        f"LoRA {lora_id!r} is not installed. Installed: {', '.join(sorted(Path(n).stem for n in names)) or 'none'}.",
        {"loraId": lora_id, "available": sorted(Path(n).stem for n in names)},
    )


def check_model_in(folder: ModelFolder, names: list[str], name: str, error: type, field: str) -> None:
    if name not in names:
        raise error(
            f"{field} {name!r} is not in the {folder} models. Available: {', '.join(sorted(names)) or 'none'}.",
            {field: name, "available": sorted(names)},
        )


async def _none() -> None:
    return None


def _value(result: Any) -> Any:
    """A result of `gather(..., return_exceptions=True)`: the value, or its exception raised here."""
    if isinstance(result, BaseException):
        raise result
    return result


# A model listing this recent confirms a model is there; a model *not* in it is always asked about again,
# so nothing is refused on stale news. (A file deleted in this window fails in the backend instead.)
LISTING_TTL = 2.0


class JobBuilder:
    def __init__(self, settings: Settings, profile: Profile, templates: TemplateStore, backend: GenerationBackend):
        self.settings = settings
        self.profile = profile
        self.templates = templates
        self.backend = backend
        self._listings: dict[str, tuple[float, list[str]]] = {}

    async def _resolve(self, folder: ModelFolder, check: Callable[[list[str]], Any]) -> Any:
        """`check(names)` on a fresh-enough listing of `folder` when it passes there, else on a new one."""
        cached = self._listings.get(folder)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL:
            try:
                return check(cached[1])
            except (CheckpointNotFound, ControlnetNotFound, LoraNotFound):
                pass  # not in the cached listing: ask the backend
        names = await self._models(folder)
        self._listings[folder] = (time.monotonic(), list(names))
        return check(names)

    async def _models(self, folder: ModelFolder) -> list[str]:
        try:
            names = await self.backend.list_models(folder)
        except ComfyUnavailable:
            raise
        except OSError as exc:
            raise ComfyUnavailable(f"Cannot list {folder}: {exc}") from None
        return names or []

    async def _check_model(self, folder: ModelFolder, name: str, error: type, field: str) -> None:
        await self._resolve(folder, lambda names: check_model_in(folder, names, name, error, field))

    async def build(self, req: JobRequest) -> BuiltJob:
        if req.batch_size is not None:
            self.profile.check_batch(req.batch_size)
        if req.workflow is not None:
            # poseImagePath is the one companion a whole workflow takes: the file its LoadImage loads.
            given = [f for f in PARAM_FIELDS if f != "pose_image_path" and getattr(req, f) is not None]
            if given:
                raise InvalidField(
                    f"A job with a whole workflow takes no parameter fields; got {', '.join(given)}.",
                    {"fields": given},
                )
            return await self._build_from_workflow(req.workflow, req.pose_image_path)
        if req.prompt is None:
            raise InvalidField("prompt is required.", {"field": "prompt"})
        return await self._build_from_template(req)

    async def _build_from_template(self, req: JobRequest) -> BuiltJob:
        s = self.settings
        res = req.resolution
        width, height = (res.width, res.height) if res else (self.profile.max_width, self.profile.max_height)
        self.profile.check_resolution(width, height)
        checkpoint = req.checkpoint or s.checkpoint
        check_name("checkpoint", checkpoint)
        if req.lora_id is not None:
            check_name("loraId", req.lora_id)
        # The pose check and the model listings are independent round trips (a thread, one HTTP request
        # per folder): run them together, then decide in the order one after another would (pose image,
        # checkpoint, LoRA, ControlNet), so the same request is refused with the same error.
        lora_id = req.lora_id
        results = await asyncio.gather(
            asyncio.to_thread(check_pose_image, req.pose_image_path) if req.pose_image_path else _none(),
            self._resolve("checkpoints", lambda names: check_model_in(
                "checkpoints", names, checkpoint, CheckpointNotFound, "checkpoint")),
            self._resolve("loras", lambda names: find_lora_in(names, lora_id)) if lora_id else _none(),
            self._resolve("controlnet", lambda names: check_model_in(
                "controlnet", names, s.controlnet_model, ControlnetNotFound, "controlnetModel"))
            if req.pose_image_path else _none(),
            return_exceptions=True,
        )
        pose_result, checkpoint_result, lora_result, controlnet_result = results
        pose = _value(pose_result)
        _value(checkpoint_result)
        lora_file = _value(lora_result)
        if pose is not None:
            _value(controlnet_result)

        params: dict[str, Any] = {
            "prompt": req.prompt,
            "negativePrompt": req.negative_prompt if req.negative_prompt is not None else s.negative_prompt,
            "seed": req.seed if req.seed is not None else secrets.randbelow(2**32),
            "steps": req.steps or s.steps,
            "cfg": req.cfg if req.cfg is not None else s.cfg,
            "sampler": req.sampler or s.sampler,
            "scheduler": req.scheduler or s.scheduler,
            "width": width,
            "height": height,
            "checkpoint": checkpoint,
            "loraId": req.lora_id,
            "loraStrength": (req.lora_strength if req.lora_strength is not None else s.lora_strength)
            if req.lora_id else None,
            "controlnetStrength": (req.controlnet_strength if req.controlnet_strength is not None
                                   else s.controlnet_strength) if pose else None,
            "denoise": req.denoise if req.denoise is not None else 1.0,
            "poseImagePath": str(pose) if pose else None,
        }
        template = self.templates.get(choose_template(lora_file is not None, pose is not None))
        slots: dict[str, Any] = {
            "prompt_text": params["prompt"],
            "negative_prompt": params["negativePrompt"],
            "seed": params["seed"],
            "checkpoint_name": checkpoint,
            "steps": params["steps"],
            "cfg": params["cfg"],
            "sampler_name": params["sampler"],
            "scheduler": params["scheduler"],
            "denoise": params["denoise"],
            "width": width,
            "height": height,
            "batch_size": 1,
        }
        if lora_file:
            slots["lora_name"] = lora_file
            slots["lora_strength"] = params["loraStrength"]
        if pose:
            slots["pose_image"] = pose.name
            slots["controlnet_strength"] = params["controlnetStrength"]
            slots["controlnet_name"] = s.controlnet_model
        workflow = template.fill({k: v for k, v in slots.items() if template.has_slot(k)})
        await self.backend.validate(workflow)
        return BuiltJob(params=params, template=template.name, workflow=workflow, pose_image=pose)

    async def _build_from_workflow(self, workflow: dict[str, Any], pose_image_path: str | None = None) -> BuiltJob:
        """A whole workflow (reproduce): the same limits, read off its nodes. A LoadImage node loads the
        image given as `pose_image_path` (the image is not part of a workflow)."""
        validate_graph(workflow)
        params: dict[str, Any] = {}
        controlnets = 0
        loaders = [nid for nid, node in workflow.items() if node["class_type"] == "LoadImage"]
        pose: Path | None = None
        if loaders and pose_image_path is None:
            raise InvalidField(
                f"This workflow loads an image (LoadImage node {', '.join(loaders)}), which is not part of it: "
                "pass poseImagePath with the image file to load.", {"field": "poseImagePath", "nodes": loaders})
        if pose_image_path is not None:
            if len(loaders) != 1:
                raise InvalidField(
                    f"poseImagePath is the image of the workflow's one LoadImage node; it has {len(loaders)}.",
                    {"field": "poseImagePath", "nodes": loaders})
            pose = await asyncio.to_thread(check_pose_image, pose_image_path)
            # Named as a pose job's workflow names it: the backends place that file under this name.
            workflow = {**workflow, loaders[0]: {**workflow[loaders[0]],
                                                 "inputs": {**workflow[loaders[0]]["inputs"], "image": pose.name}}}
            params["poseImagePath"] = str(pose)
        for node in workflow.values():
            kind, inputs = node["class_type"], node["inputs"]
            if kind == "EmptyLatentImage":
                self.profile.check_resolution(int(inputs.get("width", 0)), int(inputs.get("height", 0)))
                self.profile.check_batch(int(inputs.get("batch_size", 1)))
                params.update(width=inputs.get("width"), height=inputs.get("height"))
            elif kind == "CheckpointLoaderSimple":
                check_name("ckpt_name", str(inputs.get("ckpt_name", "")))
                await self._check_model("checkpoints", inputs["ckpt_name"], CheckpointNotFound, "checkpoint")
                params["checkpoint"] = inputs["ckpt_name"]
            elif kind == "LoraLoader":
                check_name("lora_name", str(inputs.get("lora_name", "")))
                # The exact file: ComfyUI refuses `x.ckpt` when only `x.safetensors` is installed.
                await self._check_model("loras", inputs["lora_name"], LoraNotFound, "lora_name")
                params.update(loraId=Path(inputs["lora_name"]).stem, loraStrength=inputs.get("strength_model"))
            elif kind == "ControlNetLoader":
                controlnets += 1
                await self._check_model("controlnet", inputs.get("control_net_name", ""), ControlnetNotFound,
                                        "controlnetModel")
            elif kind == "ControlNetApplyAdvanced":
                params["controlnetStrength"] = inputs.get("strength")
            elif kind == "KSampler":
                params.update(seed=inputs.get("seed"), steps=inputs.get("steps"), cfg=inputs.get("cfg"),
                              sampler=inputs.get("sampler_name"), scheduler=inputs.get("scheduler"),
                              denoise=inputs.get("denoise"))
        if controlnets > self.profile.max_controlnets:
            raise InvalidField(
                f"The {self.profile.name} profile allows {self.profile.max_controlnets} ControlNet per job.",
                {"profile": self.profile.name, "limit": self.profile.max_controlnets},
            )
        # Prompts are read from the encoders that feed the sampler's positive/negative inputs.
        for node in workflow.values():
            if node["class_type"] == "KSampler":
                for key, name in (("positive", "prompt"), ("negative", "negativePrompt")):
                    src = node["inputs"].get(key)
                    text_node = workflow.get(src[0]) if isinstance(src, list) else None
                    if text_node and text_node["class_type"] == "CLIPTextEncode":
                        params[name] = text_node["inputs"].get("text")
        await self.backend.validate(workflow)
        return BuiltJob(params=params, template=None, workflow=workflow, pose_image=pose)
