"""From a `GenerationRequest` to a `JobSpec`: defaults, limits, names, files, template choice, slot filling.

Everything a job is refused for is decided here, at submit time, so nothing refused ever reaches
a backend. A whole workflow is held to the same limits as a template job: its nodes are checked
against the supported node types (`sidecar.nodes`), its sizes against the profile, its values
against the job parameter limits (`sidecar.jobs.params`), and its params are read off the checked
graph. The result is the typed job the runner stores and hands to the backend.

Why one module: every refusal of a submit is decided here in one fixed order (family, size, LoRA stack,
pose image, checkpoint, LoRAs, ControlNet, init image, template), so the same request is always refused
with the same error; the order reads top to bottom in `_build_from_template`. The pieces that stand alone
live beside it (`families` reads a model's family, `whole` a workflow's params, `init_image` the init
image, `sidecar.lora_stack` the chained loaders). The family checks (`_check_family`, `_wanted_loras`,
`_check_template`) are the next piece to move out when this grows again.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend, ModelFolder
from sidecar.config import Settings
from sidecar.errors import (
    CheckpointNotFound,
    ComfyUnavailable,
    ControlnetNotFound,
    FamilyNotSupported,
    InitImageInvalid,
    InvalidField,
    LoraFamilyMismatch,
    LoraNotFound,
    PoseImageInvalid,
    SidecarError,
    UpscaleModelNotFound,
)
from sidecar.inputs import is_ours
from sidecar.jobs import init_image
from sidecar.jobs.families import ModelFamilies
from sidecar.jobs.params import GenerationRequest, JobParams, JobSpec, LoraUse
from sidecar.jobs.whole import read_whole_workflow
from sidecar.families import FAMILY_NAMES, SAMPLING_DEFAULTS, TEMPLATE_PREFIX
from sidecar.lora_stack import StackedLora, stack_loras
from sidecar.profiles import PROFILES, Profile
from sidecar.upscaling import UPSCALE_ONLY, upscale_only, with_upscale
from sidecar.userfiles import check_image
from sidecar.workflows import TemplateStore

# Where ComfyUI writes a job's image is the daemon's choice: a whole workflow's SaveImage prefix is
# replaced unless it is already one of ours (so a job's workflow, resubmitted, is the same graph).
SAVE_PREFIX = "plasma-sidecar/workflow"
OUR_PREFIX = re.compile(r"plasma-sidecar/[A-Za-z0-9_-]{1,64}")


def check_name(field: str, value: str) -> None:
    """Model names are bare file names: no separators, no `..`."""
    if "/" in value or "\\" in value or ".." in value or "\x00" in value or not value.strip():
        raise InvalidField(
            f"{field} must be a bare name without path separators or '..', got {value!r}.",
            {"field": field, "value": value},
        )


def choose_template(has_lora: bool, has_pose: bool, has_init: bool = False, family: str | None = None) -> str:
    """[sdxl-|flux-] (the family's), then txt2img | img2img (an init image), then -pose (a pose image's
    ControlNet), then -lora."""
    return TEMPLATE_PREFIX.get(family or "sd15", "") + "-".join(
        part for part, used in (("img2img" if has_init else "txt2img", True), ("pose", has_pose),
                                ("lora", has_lora)) if used)


def check_pose_image(raw: str) -> Path:
    """Blocking: the pose image, bounded in bytes and pixels before it is decoded."""
    return check_image(raw, "poseImagePath", PoseImageInvalid).path


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
            {field: name, "field": field, "available": sorted(names)},
        )


# The loader of a workflow's main model, and the folder it loads from.
MODEL_LOADERS = {"CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
                 "UNETLoader": ("unet_name", "diffusion_models")}


def checkpoint_of(workflow: dict[str, Any]) -> tuple[ModelFolder, str] | None:
    """(folder, file) of the first checkpoint or diffusion model a raw workflow loads, else None."""
    for node in workflow.values() if isinstance(workflow, dict) else ():
        if isinstance(node, dict) and node.get("class_type") in MODEL_LOADERS:
            field, folder = MODEL_LOADERS[node["class_type"]]
            name = (node.get("inputs") or {}).get(field)
            if isinstance(name, str) and name and "/" not in name and ".." not in name:
                return folder, name  # type: ignore[return-value]
    return None


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
    def __init__(self, settings: Settings, profile: Profile, templates: TemplateStore, backend: GenerationBackend,
                 *, limits: Profile | None = None, find_job: init_image.JobImage | None = None,
                 backend_profiles: dict[str, Profile] | None = None):
        """`profile` gives a job's defaults (its size); `limits` what is refused here, when wider (several
        backends: the widest of their profiles; each backend's own is the router's to apply). `find_job`:
        a job id -> its record, for initJobId. `backend_profiles`: each [[backends]] entry's profile, named
        where a family this profile does not run can run."""
        self.settings = settings
        self.profile = profile
        self.limits = limits or profile
        self.backend_profiles = backend_profiles or {}
        self.templates = templates
        self.backend = backend
        self.find_job = find_job  # a job id -> its record, for initJobId
        self.input_dir = init_image.input_dir(settings.data_dir)
        self._listings: dict[str, tuple[float, list[str]]] = {}
        self.families = ModelFamilies(backend)  # each model's family, from its header where the file is here

    async def _resolve(self, folder: ModelFolder, check: Callable[[list[str]], Any]) -> Any:
        """`check(names)` on a fresh-enough listing of `folder` when it passes there, else on a new one."""
        cached = self._listings.get(folder)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL:
            try:
                return check(cached[1])
            except (CheckpointNotFound, ControlnetNotFound, LoraNotFound, UpscaleModelNotFound):
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

    async def build(self, req: GenerationRequest) -> JobSpec:
        if req.batch_size is not None:
            self.limits.check_batch(req.batch_size)
        if req.workflow is not None:
            # The images are the companions a whole workflow takes: the files its LoadImage nodes load.
            given = req.parameter_fields()
            if given:
                raise InvalidField(
                    f"A job with a whole workflow takes no parameter fields; got {', '.join(given)}.",
                    {"fields": given},
                )
            spec = await self._build_from_workflow(req.workflow, req.pose_image_path, req)
        elif req.prompt is None and req.upscale_model is not None and (req.init_image_path or req.init_job_id):
            spec = await self._build_upscale_only(req)
        elif req.prompt is None:
            raise InvalidField("prompt is required.", {"field": "prompt"})
        else:
            spec = await self._build_from_template(req)
        return replace(spec, where=req.where) if req.where is not None else spec

    async def _checkpoint_folder(self, name: str) -> ModelFolder:
        """Where the checkpoint is: `checkpoints`, or `diffusion_models` when only that folder has it (Flux).
        Neither: `checkpoints`, whose check then refuses it in its turn."""
        for folder in ("checkpoints", "diffusion_models"):
            try:
                await self._check_model(folder, name, CheckpointNotFound, "checkpoint")  # type: ignore[arg-type]
                return folder  # type: ignore[return-value]
            except CheckpointNotFound:
                continue
        return "checkpoints"

    async def _family(self, folder: ModelFolder, name: str) -> str | None:
        return (await self.families.family(folder, name)).known

    async def checkpoint_family(self, checkpoint: str | None) -> str | None:
        """The family a job of `checkpoint` (else the default checkpoint) renders as, the way `build` reads it;
        None when unknown (a prompt for it is composed as SD 1.5 tags). Refuses nothing: the job's build does."""
        name = checkpoint or self.settings.checkpoint
        try:
            folder = await self._checkpoint_folder(name)
            return await self._family(folder, name) or ("flux" if folder == "diffusion_models" else None)
        except (OSError, SidecarError):
            return None

    def _check_family(self, family: str | None) -> Profile:
        """The limits a job of `family` is held to; `family_not_supported` naming where it can run."""
        if family is None:
            return self.limits  # unknown (a model only a remote backend has): the base family's limits
        if not self.limits.allows(family):
            backends = sorted(name for name, p in self.backend_profiles.items() if p.allows(family))
            profiles = sorted(name for name, p in PROFILES.items() if p.allows(family))
            where = (f"backends that run it: {', '.join(backends)} (name one with `where`)" if backends else
                     f"no configured backend runs it; profiles that do: {', '.join(profiles)} (a [[backends]] "
                     "entry with one of them, or the `profile` setting)")
            raise FamilyNotSupported(
                f"The checkpoint is a {FAMILY_NAMES.get(family, family)} ({family}) model, which the "
                f"{self.limits.name} profile does not run (it runs {', '.join(self.limits.family_names)}); {where}.",
                {"family": family, "profile": self.limits.name, "allowedFamilies": list(self.limits.family_names),
                 "backends": backends, "profiles": profiles})
        engine_families = getattr(self.backend, "families", None)
        if engine_families is not None and family not in engine_families:
            raise FamilyNotSupported(
                f"The checkpoint is a {FAMILY_NAMES.get(family, family)} ({family}) model; the {self.backend.name} "
                f"engine runs {', '.join(engine_families)} only. Run it on a ComfyUI backend (engine = \"comfyui\", "
                "or a [[backends]] entry).", {"family": family, "engine": self.backend.name,
                                             "allowedFamilies": list(engine_families)})
        return self.limits.for_family(family)

    def _check_template(self, name: str, family: str | None, pose: bool) -> None:
        if family in (None, "sd15"):
            return  # the base templates: a missing one is workflow_invalid, as it always was
        if name not in self.templates.templates and name not in self.templates.aliases:
            raise FamilyNotSupported(
                f"There is no {name!r} template: {FAMILY_NAMES.get(family or '', family)} jobs "
                f"{'with a pose image ' if pose else ''}cannot run here; add the template to a workflows_dir.",
                {"family": family, "template": name, "field": "poseImagePath" if pose else "checkpoint"})

    def _defaults(self, family: str | None) -> Profile:
        """The profile whose default size a job of `family` gets."""
        if family is None or self.profile.allows(family):
            return self.profile.for_family(family)
        return self.limits.for_family(family)

    async def _build_from_template(self, req: GenerationRequest) -> JobSpec:
        s = self.settings
        res = req.resolution
        checkpoint = req.checkpoint or s.checkpoint
        check_name("checkpoint", checkpoint)
        folder = await self._checkpoint_folder(checkpoint)
        # A file of diffusion_models/ is loaded as Flux (UNETLoader + its text encoders and VAE): the one family
        # whose models come that way; its header says so where this machine has it.
        family = await self._family(folder, checkpoint) or ("flux" if folder == "diffusion_models" else None)
        limits = self._check_family(family)
        defaults = self._defaults(family)
        # One default however the size is left out (no resolution, {}, or one side): the profile's (for the family).
        width = res.width if res and res.width is not None else defaults.default_width
        height = res.height if res and res.height is not None else defaults.default_height
        limits.check_resolution(width, height)
        wanted = self._wanted_loras(req, limits)
        # Before any file is looked up: a family without a template for this kind of job (SDXL and Flux have no
        # pose template: the ControlNet is SD 1.5's) is refused for that, whatever else is missing.
        self._check_template(choose_template(bool(wanted), req.pose_image_path is not None, False, family), family,
                             req.pose_image_path is not None)
        # The pose check and the model listings are independent round trips (a thread, one HTTP request
        # per folder): run them together, then decide in the order one after another would (pose image,
        # checkpoint, LoRA, ControlNet), so the same request is refused with the same error.
        results = await asyncio.gather(
            asyncio.to_thread(check_pose_image, req.pose_image_path) if req.pose_image_path else _none(),
            self._resolve(folder, lambda names: check_model_in(
                folder, names, checkpoint, CheckpointNotFound, "checkpoint")),
            self._resolve("loras", lambda names: [find_lora_in(names, lora_id) for lora_id, _ in wanted])
            if wanted else _none(),
            self._resolve("controlnet", lambda names: check_model_in(
                "controlnet", names, s.controlnet_model, ControlnetNotFound, "controlnetModel"))
            if req.pose_image_path else _none(),
            return_exceptions=True,
        )
        pose_result, checkpoint_result, lora_result, controlnet_result = results
        pose = _value(pose_result)
        _value(checkpoint_result)
        lora_files: list[str] = _value(lora_result) or []
        if pose is not None:
            _value(controlnet_result)
        for lora_file in lora_files:
            await self._check_lora_family(checkpoint, family, lora_file)
        hashes = await asyncio.gather(*(self.families.sha256("loras", f) for f in lora_files))
        stack = [LoraUse(id=lora_id, strength=strength if strength is not None else s.lora_strength, file=f,
                         sha256=digest)
                 for (lora_id, strength), f, digest in zip(wanted, lora_files, hashes, strict=True)]
        init = await self._init_image(req, (width, height))

        sampling = SAMPLING_DEFAULTS.get(family or "", {})
        params = JobParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt if req.negative_prompt is not None else s.negative_prompt,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
            steps=req.steps or s.steps,
            cfg=req.cfg if req.cfg is not None else float(sampling.get("cfg", s.cfg)),
            sampler=req.sampler or str(sampling.get("sampler", s.sampler)),
            scheduler=req.scheduler or str(sampling.get("scheduler", s.scheduler)),
            width=width,
            height=height,
            checkpoint=checkpoint,
            family=family,
            lora_id=stack[0].id if stack else None,
            lora_strength=stack[0].strength if stack else None,
            loras=stack or None,
            controlnet_strength=(req.controlnet_strength if req.controlnet_strength is not None
                                 else s.controlnet_strength) if pose else None,
            denoise=req.denoise if req.denoise is not None else 1.0,
            pose_image_path=str(pose) if pose else None,
            init_image_path=str(init.source) if init else None,
            init_job_id=init.job_id if init else None,
            refined_from=req.refined_from,
            upscale_model=req.upscale_model,
        )
        name = choose_template(bool(lora_files), pose is not None, init is not None, family)
        self._check_template(name, family, pose is not None)
        template = self.templates.get(name)
        slots: dict[str, Any] = {
            "prompt_text": params.prompt,
            "negative_prompt": params.negative_prompt,
            "seed": params.seed,
            "checkpoint_name": checkpoint,
            "steps": params.steps,
            "cfg": params.cfg,
            "sampler_name": params.sampler,
            "scheduler": params.scheduler,
            "denoise": params.denoise,
            "width": width,
            "height": height,
            "batch_size": 1,
            # Flux's text encoders and VAE are the backend's files, named in the settings.
            "clip_l_name": s.flux_clip_l,
            "t5xxl_name": s.flux_t5xxl,
            "vae_name": s.flux_vae,
        }
        if lora_files:
            slots["lora_name"] = lora_files[0]
            slots["lora_strength"] = stack[0].strength
        if pose:
            slots["pose_image"] = pose.name
            slots["controlnet_strength"] = params.controlnet_strength
            slots["controlnet_name"] = s.controlnet_model
        if init:
            slots["init_image"] = init.name
        workflow = template.fill({k: v for k, v in slots.items() if template.has_slot(k)})
        if lora_files:
            # The rest of the stack, chained after the template's loader. Flux's are model-only loaders, unless
            # a LoRA carries text-encoder weights (sidecar.lora_stack says why).
            clips = (await asyncio.gather(*(self.families.has_text_encoder(f) for f in lora_files))
                     if family == "flux" else [False] * len(lora_files))
            workflow = stack_loras(workflow, template.spec.slots["lora_name"][0].node, clips[0],
                                   [StackedLora(f, ref.strength, c) for f, ref, c in
                                    zip(lora_files[1:], stack[1:], clips[1:], strict=True)])
        if req.upscale_model is not None:
            await self._check_upscale_model(req.upscale_model)
            workflow = with_upscale(workflow, req.upscale_model)
        await self.backend.validate(workflow)
        return JobSpec(params=params, template=template.name, workflow=workflow, pose_image=pose)

    def _wanted_loras(self, req: GenerationRequest, limits: Profile) -> list[tuple[str, float | None]]:
        """The LoRA stack asked for: `loras`, or its one-LoRA form `loraId` (+ `loraStrength`)."""
        if req.loras is not None and (req.lora_id is not None or req.lora_strength is not None):
            raise InvalidField("loraId and loraStrength are the one-LoRA form of loras: give one or the other.",
                               {"field": "loras"})
        if req.loras is None:
            if req.lora_id is None:
                return []
            check_name("loraId", req.lora_id)
            return [(req.lora_id, req.lora_strength)]
        if len(req.loras) > limits.max_loras:
            raise InvalidField(f"loras: {len(req.loras)} LoRAs; the {limits.name} profile allows at most "
                               f"{limits.max_loras} per job.", {"field": "loras", "profile": limits.name,
                                                                  "limit": limits.max_loras,
                                                                  "requested": len(req.loras)})
        seen: set[str] = set()
        for i, ref in enumerate(req.loras):
            check_name(f"loras[{i}].id", ref.id)
            if ref.id in seen:
                raise InvalidField(f"loras: {ref.id!r} is listed twice; give it once with the strength wanted.",
                                   {"field": f"loras[{i}].id", "value": ref.id})
            seen.add(ref.id)
        return [(ref.id, ref.strength) for ref in req.loras]

    async def _check_lora_family(self, checkpoint: str, family: str | None, lora_file: str) -> None:
        """A LoRA made for another family than the checkpoint's cannot apply to it (its keys and shapes are
        another network's): refused when both families are known."""
        lora_family = await self._family("loras", lora_file)
        if family is not None and lora_family is not None and lora_family != family:
            raise LoraFamilyMismatch(
                f"LoRA {Path(lora_file).stem!r} is a {lora_family} LoRA; the checkpoint {checkpoint!r} is a {family} "
                f"model. Choose a {family} LoRA or a {lora_family} checkpoint.",
                {"loraId": Path(lora_file).stem, "loraFamily": lora_family, "checkpoint": checkpoint,
                 "checkpointFamily": family})

    async def _build_upscale_only(self, req: GenerationRequest) -> JobSpec:
        """`upscaleModel` with `initJobId` or `initImagePath` and no prompt: only upscale that image (a page
        version already rendered) at its own size, which the profile's limits hold for."""
        given = [f for f in req.parameter_fields() if f != "prompt"] + (["pose_image_path"] if req.pose_image_path
                                                                          else [])
        if given:
            raise InvalidField(f"An upscale of an existing image (upscaleModel with initJobId or initImagePath, no "
                               f"prompt) takes no other parameters; got {', '.join(given)}.", {"fields": given})
        assert req.upscale_model is not None
        await self._check_upscale_model(req.upscale_model)
        source, job_id = await init_image.source_of(req.init_image_path, req.init_job_id, self.find_job)
        field = init_image.field_of(job_id)
        info = await asyncio.to_thread(check_image, str(source), field, InitImageInvalid)
        try:
            # Any family's image: the size the largest of them allows.
            self.limits.check_resolution_of_any_family(max(8, info.width // 8 * 8), max(8, info.height // 8 * 8))
        except SidecarError as exc:
            exc.details["field"] = field
            raise
        name, width, height = await asyncio.to_thread(init_image.store, source, field, self.input_dir, None)
        workflow = upscale_only(name, req.upscale_model)
        await self.backend.validate(workflow)
        params = JobParams(upscale_model=req.upscale_model, init_image_path=str(source), init_job_id=job_id,
                           width=width, height=height)
        return JobSpec(params=params, template=UPSCALE_ONLY, workflow=workflow, pose_image=None)

    async def _check_upscale_model(self, model: str) -> None:
        check_name("upscaleModel", model)
        await self._check_model("upscale_models", model, UpscaleModelNotFound, "upscaleModel")

    async def _init_image(self, req: GenerationRequest, size: tuple[int, int]) -> init_image.InitImage | None:
        """The request's init image fitted to `size` and stored, or None: without one, or at denoise 1
        (the image would mean nothing: the job renders as txt2img, identical to one without it)."""
        has_init = req.init_image_path is not None or req.init_job_id is not None
        init_image.check_denoise(req.denoise, has_init)
        if not has_init:
            return None
        source, job_id = await init_image.source_of(req.init_image_path, req.init_job_id, self.find_job)
        field = init_image.field_of(job_id)
        if req.denoise is None:
            raise InitImageInvalid(f"{field} needs denoise: how much of the init image is redrawn (0.05 keeps "
                                   "nearly all of it, 1.0 ignores it).", {"field": "denoise"})
        if req.denoise >= init_image.FULL_DENOISE:
            # Still checked, so a bad file is refused the same whatever the denoise.
            await asyncio.to_thread(check_image, str(source), field, InitImageInvalid)
            return None
        name, width, height = await asyncio.to_thread(init_image.store, source, field, self.input_dir, size)
        return init_image.InitImage(source=source, job_id=job_id, name=name, width=width, height=height)

    async def _build_from_workflow(self, workflow: dict[str, Any], pose_image_path: str | None = None,
                                   req: GenerationRequest | None = None) -> JobSpec:
        """A whole workflow (reproduce, an edited `.workflow.json`): checked node by node and held to the
        profile and the parameter limits (`sidecar.jobs.whole`); its models are looked up like a template
        job's; a LoadImage node loads the image given as `pose_image_path` (an image is not part of a
        workflow); the SaveImage prefix is the daemon's."""
        # Its family is its checkpoint's: an SDXL job's workflow, reproduced, is held to SDXL's sizes.
        named = checkpoint_of(workflow)
        family = await self._family(*named) if named is not None else None
        if family is None and named is not None and named[0] == "diffusion_models":
            family = "flux"  # as a template job's diffusion model is taken
        limits = self._check_family(family)
        whole = read_whole_workflow(workflow, limits)
        if req is not None and req.upscale_model is not None:
            # A whole workflow upscaled too (a reproduced page printed): the step added, or its model set.
            await self._check_upscale_model(req.upscale_model)
            try:
                whole = read_whole_workflow(with_upscale(whole.graph.raw, req.upscale_model), limits)
            except ValueError as exc:
                raise InvalidField(f"upscaleModel: {exc}.", {"field": "upscaleModel"}) from None
        graph = whole.graph
        pose: Path | None = None
        init = await self._whole_init(whole, req, limits)
        if whole.loaders and pose_image_path is None:
            raise InvalidField(
                f"This workflow loads an image (LoadImage node {', '.join(whole.loaders)}), which is not part of "
                "it: pass poseImagePath with the image file to load.",
                {"field": "poseImagePath", "nodes": whole.loaders})
        changes: dict[str, dict[str, Any]] = {
            nid: {"filename_prefix": SAVE_PREFIX} for nid in whole.outputs
            if not OUR_PREFIX.fullmatch(str(graph[nid].inputs.get("filename_prefix", "")))}
        if pose_image_path is not None:
            if len(whole.loaders) != 1:
                raise InvalidField(
                    f"poseImagePath is the image of the workflow's one LoadImage node; it has {len(whole.loaders)}.",
                    {"field": "poseImagePath", "nodes": whole.loaders})
            pose = await asyncio.to_thread(check_pose_image, pose_image_path)
            # Named as a pose job's workflow names it: the backends place that file under this name.
            changes[whole.loaders[0]] = {"image": pose.name}
        for field, folder, name in whole.models:
            check_name(field, name)
            error = {"checkpoints": CheckpointNotFound, "diffusion_models": CheckpointNotFound, "loras": LoraNotFound,
                     "upscale_models": UpscaleModelNotFound}.get(folder, ControlnetNotFound)
            # The exact file: ComfyUI refuses `x.ckpt` when only `x.safetensors` is installed.
            await self._check_model(folder, name, error, field)
        if whole.controlnets > self.limits.max_controlnets:
            raise InvalidField(
                f"The {self.limits.name} profile allows {self.limits.max_controlnets} ControlNet per job.",
                {"profile": self.limits.name, "limit": self.limits.max_controlnets},
            )
        if init is not None:
            changes[whole.init_loaders[0]] = {"image": init.name}
        filled = graph.with_inputs(changes).raw
        update: dict[str, Any] = {"pose_image_path": str(pose) if pose else None, "family": family}
        if init is not None:
            update.update(init_image_path=str(init.source), init_job_id=init.job_id, width=init.width // 8 * 8,
                          height=init.height // 8 * 8)
        if whole.params.loras:
            for use in whole.params.loras:
                await self._check_lora_family(named[1] if named else "", family, use.file or use.id)
            hashes = await asyncio.gather(*(self.families.sha256("loras", u.file or u.id) for u in whole.params.loras))
            update["loras"] = [u.model_copy(update={"sha256": h}) for u, h in zip(whole.params.loras, hashes,
                                                                                 strict=True)]
        params = whole.params.model_copy(update=update)
        await self.backend.validate(filled)
        return JobSpec(params=params, template=None, workflow=filled, pose_image=pose)

    async def _whole_init(self, whole: Any, req: GenerationRequest | None,
                          limits: Profile) -> init_image.InitImage | None:
        """A whole workflow's init image: the image its VAEEncode's LoadImage loads, at its own size (the
        workflow says none), which the profile's limits hold for."""
        path, job_id = (req.init_image_path, req.init_job_id) if req is not None else (None, None)
        if not whole.init_loaders:
            if path is not None or job_id is not None:
                raise InitImageInvalid(f"{init_image.field_of(job_id)}: this workflow has no VAEEncode of a "
                                       "LoadImage to take an init image.", {"field": init_image.field_of(job_id)})
            return None
        if len(whole.init_loaders) == 1 and path is None and job_id is None:
            # A logged img2img workflow names the daemon's own copy, which it finds again (reproduce).
            named = whole.graph[whole.init_loaders[0]].inputs.get("image")
            if is_ours(named) and (self.input_dir / named).is_file():
                path = str(self.input_dir / named)
        if path is None and job_id is None:
            raise InitImageInvalid(
                f"This workflow encodes an image (LoadImage node {whole.init_loaders[0]} into VAEEncode), which is "
                "not part of it: pass initImagePath (or initJobId) with the image to start from.",
                {"field": "initImagePath", "nodes": whole.init_loaders})
        if len(whole.init_loaders) != 1:
            raise InitImageInvalid(f"initImagePath is the image of the workflow's one VAEEncode; it has "
                                   f"{len(whole.init_loaders)}.",
                                   {"field": "initImagePath", "nodes": whole.init_loaders})
        source, job_id = await init_image.source_of(path, job_id, self.find_job)
        field = init_image.field_of(job_id)
        info = await asyncio.to_thread(check_image, str(source), field, InitImageInvalid)
        try:
            limits.check_resolution(info.width // 8 * 8, info.height // 8 * 8)
        except SidecarError as exc:
            exc.details["field"] = field
            raise
        name, width, height = await asyncio.to_thread(init_image.store, source, field, self.input_dir, None)
        return init_image.InitImage(source=source, job_id=job_id, name=name, width=width, height=height)
