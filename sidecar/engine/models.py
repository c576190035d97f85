"""The models dir and loading what is in it: SD1.5 and SDXL checkpoints, kohya LoRA files, SD1.5 ControlNets.

Laid out like ComfyUI's `models/` (`checkpoints/`, `loras/`, `controlnet/`), so it can be the user's
ComfyUI folder. Checkpoints are single files in the original key layout (SD1.5's, SDXL's SGM one:
`convert_sdxl`) or diffusers folders; a file is SDXL when it holds a second text encoder.
Architecture configs ship with the package (`configs/sd15/`, `configs/sdxl/`); a `<name>.arch.json`
beside a model overrides them (the tiny test models), so one loader reads full-size and tiny alike.
This module loads onto the CPU in the file's dtype; placing on a device (and casting) is the cache's job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sidecar.engine import convert, convert_sdxl
from sidecar.engine.safetensors_file import read_safetensors
from sidecar.engine.tokenizer import TokenizerSource, find_tokenizer, load_tokenizer
from sidecar.errors import (
    CheckpointNotFound, ControlnetNotFound, FamilyNotSupported, JobFailed, LoraNotFound, UpscaleModelNotFound,
)
from sidecar.families import FAMILY_NAMES, family_of_file
from sidecar.profiles import where_it_trains

log = logging.getLogger("sidecar.engine")

FOLDERS = ("checkpoints", "loras", "controlnet")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
ARCH_SUFFIX = ".arch.json"
NOT_FOUND = {"checkpoints": CheckpointNotFound, "loras": LoraNotFound, "controlnet": ControlnetNotFound,
             "upscale_models": UpscaleModelNotFound}


def shipped_config(name: str, family: str = "sd15") -> dict[str, Any]:
    text = resources.files("sidecar.engine").joinpath("configs", family, f"{name}.json").read_text("utf-8")
    return json.loads(text)


# -- the models dir

def list_models(models_path: Path, folder: str) -> list[str]:
    """Model files (by suffix, as ComfyUI lists them) and diffusers folders, sorted."""
    directory = models_path / folder
    if not directory.is_dir():
        return []
    names = []
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in MODEL_SUFFIXES:
            names.append(entry.name)
        elif entry.is_dir() and ((entry / "model_index.json").is_file() or (entry / "config.json").is_file()):
            names.append(entry.name)
    return sorted(names)


def resolve(models_path: Path, folder: str, name: str) -> Path:
    """A workflow's model name -> its path, refusing names that leave the folder."""
    base = models_path / folder
    path = base / name
    # Bare names only; symlinks inside the folder are fine (ComfyUI users link big files in).
    if not name or "/" in name or "\\" in name or name in (".", "..") or not path.exists():
        available = list_models(models_path, folder)
        raise NOT_FOUND[folder](
            f"{folder} model {name!r} is not in {base}. Available: {', '.join(available) or 'none'}.",
            {"name": name, "folder": str(base), "available": available},
        )
    return path


def stamp(path: Path) -> tuple[str, int, int]:
    """Identity of a model file for the cache: a changed file is a different model."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


# -- architecture

@dataclass
class Arch:
    unet: dict[str, Any] = field(default_factory=lambda: shipped_config("unet"))
    vae: dict[str, Any] = field(default_factory=lambda: shipped_config("vae"))
    text_encoder: dict[str, Any] = field(default_factory=lambda: shipped_config("text_encoder"))
    scheduler: dict[str, Any] = field(default_factory=lambda: shipped_config("scheduler"))
    controlnet: dict[str, Any] = field(default_factory=lambda: shipped_config("controlnet"))
    tokenizer: Path | None = None  # a tokenizer dir that belongs to this model
    text_encoder_2: dict[str, Any] = field(default_factory=dict)  # SDXL's OpenCLIP bigG

    @classmethod
    def of(cls, family: str) -> Arch:
        if family == "sdxl":
            return cls(**{part: shipped_config(part, "sdxl") for part in SDXL_PARTS})
        return cls()


SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


def arch_path(model: Path) -> Path:
    stem = model.name[: -len(model.suffix)] if model.is_file() else model.name
    return model.with_name(stem + ARCH_SUFFIX)


def read_arch(model: Path, family: str = "sd15") -> Arch:
    arch = Arch.of(family)
    side = arch_path(model)
    if side.is_file():
        data = json.loads(side.read_text("utf-8"))
        for part in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "controlnet"):
            if part in data:
                setattr(arch, part, {**getattr(arch, part), **data[part]})
        if data.get("tokenizer"):
            arch.tokenizer = (side.parent / data["tokenizer"]).resolve()
    return arch


# -- raw files


def read_state_dict(path: Path, cast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        return read_safetensors(path, cast)
    # Pickled checkpoints: tensors only, never arbitrary objects.
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, meta
    return read_state_dict(path), {}


def _load_failed(what: str, path: Path, exc: BaseException | str) -> JobFailed:
    return JobFailed(f"Cannot load {what} {path.name}: {exc}", {"path": str(path)}, code="model_load_failed")


def _build(factory: Any, state: dict[str, torch.Tensor], what: str, path: Path,
           family: str = "SD1.5") -> torch.nn.Module:
    """Instantiate without allocating random weights (full-size SD1.5 would spend seconds on them),
    then adopt the file's tensors as they are (no fp32 copy: the cache casts once, to the target dtype)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = factory()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys:
        raise _load_failed(what, path, f"{len(result.missing_keys)} weight(s) missing, e.g. {result.missing_keys[0]} "
                                       f"(not an {family} {what}, or a different architecture)")
    if result.unexpected_keys:
        log.debug("%s %s: ignored %d unexpected key(s)", what, path.name, len(result.unexpected_keys))
    return model.eval()


# -- checkpoints

@dataclass
class Components:
    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict[str, Any]
    text_encoder_2: torch.nn.Module | None = None  # SDXL's second text encoder (CLIPTextModelWithProjection)
    family: str = "sd15"


@dataclass(frozen=True)
class TokenizerPlaces:
    models_path: Path
    comfyui_dir: Path | None = None
    cache_dir: Path | None = None


def load_checkpoint(path: Path, places: TokenizerPlaces, cast: torch.dtype | None = None) -> Components:
    """An SD1.5 or SDXL checkpoint on the CPU in the file's dtype (or `cast`, when every part will run in
    it: the CPU's fp32): a single file (original layout) or a diffusers folder."""
    if path.is_dir():
        return _load_diffusers_folder(path)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        checkpoint = read_state_dict(path, cast)
    except Exception as exc:  # safetensors / pickle errors come in many types
        raise _load_failed("checkpoint", path, exc) from None
    if not any(k.startswith(convert.UNET_PREFIX) for k in checkpoint):
        raise _load_failed("checkpoint", path, "no `model.diffusion_model.*` weights: not an SD1.5 or SDXL checkpoint")
    if convert_sdxl.is_sdxl(checkpoint):
        return _load_sdxl(path, checkpoint, places)
    arch = read_arch(path)
    tokenizer = _tokenizer(arch, places)
    unet = _build(lambda: UNet2DConditionModel.from_config(arch.unet),
                  convert.unet_from_ldm(checkpoint, arch.unet), "UNet", path)
    vae = _build(lambda: AutoencoderKL.from_config(arch.vae), convert.vae_from_ldm(checkpoint, arch.vae), "VAE", path)
    text_config = CLIPTextConfig(**{k: v for k, v in arch.text_encoder.items() if k != "architectures"})
    text_encoder = _build(lambda: CLIPTextModel(text_config), convert.clip_from_ldm(checkpoint),
                          "text encoder", path)
    del checkpoint
    return Components(tokenizer, text_encoder, unet, vae, arch.scheduler)


def _load_sdxl(path: Path, checkpoint: dict[str, torch.Tensor], places: TokenizerPlaces) -> Components:
    """An SGM-layout SDXL file: UNet and VAE by diffusers' converters, CLIP-L and OpenCLIP bigG by ours."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    arch = read_arch(path, "sdxl")
    tokenizer = _tokenizer(arch, places)
    unet = _build(lambda: UNet2DConditionModel.from_config(arch.unet),
                  convert.unet_from_ldm(checkpoint, arch.unet), "UNet", path, "SDXL")
    vae = _build(lambda: AutoencoderKL.from_config(arch.vae), convert.vae_from_ldm(checkpoint, arch.vae), "VAE",
                 path, "SDXL")
    te1 = _build(lambda: CLIPTextModel(_clip_config(arch.text_encoder)), convert_sdxl.te1_from_sgm(checkpoint),
                 "text encoder", path, "SDXL")
    te2_config = _clip_config(arch.text_encoder_2)
    with_projection = lambda: CLIPTextModelWithProjection(te2_config)  # noqa: E731
    from accelerate import init_empty_weights

    with init_empty_weights():
        shape_only = with_projection()  # the converter reads the width off the model when the file lacks it
    te2 = _build(with_projection, convert_sdxl.te2_from_sgm(checkpoint, shape_only), "second text encoder", path,
                 "SDXL")
    del checkpoint
    return Components(tokenizer, te1, unet, vae, arch.scheduler, text_encoder_2=te2, family="sdxl")


def _clip_config(config: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"})


def _tokenizer(arch: Arch, places: TokenizerPlaces) -> Any:
    source = find_tokenizer(places.models_path, places.comfyui_dir, arch.tokenizer)
    return load_tokenizer(source, places.cache_dir)


def _load_diffusers_folder(path: Path) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sdxl = (path / "text_encoder_2").is_dir()
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        text_encoder_2 = (CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2",
                                                                      local_files_only=True).eval() if sdxl else None)
    except Exception as exc:  # a config.json from elsewhere: diffusers raises TypeError, KeyError... on odd values
        raise _load_failed("diffusers folder", path, f"{type(exc).__name__}: {str(exc)[:300]}") from None
    tokenizer_dir = path / "tokenizer"
    if (tokenizer_dir / "vocab.json").is_file():
        tokenizer = load_tokenizer(TokenizerSource("files", tokenizer_dir))
    else:  # newer transformers save only tokenizer.json
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    scheduler = shipped_config("scheduler", "sdxl" if sdxl else "sd15")
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        try:
            given = json.loads(sched_file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise _load_failed("diffusers folder", path, f"scheduler/scheduler_config.json: {exc}") from None
        if not isinstance(given, dict):
            raise _load_failed("diffusers folder", path, "scheduler/scheduler_config.json is not a JSON object")
        scheduler.update({k: given[k] for k in scheduler if k in given})
    return Components(tokenizer, text_encoder.eval(), unet.eval(), vae.eval(), scheduler,
                      text_encoder_2=text_encoder_2, family="sdxl" if sdxl else "sd15")


def load_training_components(base_model: Path, places: TokenizerPlaces | None = None) -> Components:
    """A private fp32 CPU copy of a base model for the embedded trainer (never the engine's cached one).
    The embedded trainer trains SD 1.5 only: an SDXL or Flux base is refused by its header, before
    gigabytes are read (the run may have been told `family: sd15` of a file that is not)."""
    _refuse_untrainable(family_of_file(base_model).known, base_model)
    places = places or TokenizerPlaces(models_path=base_model.parent.parent)
    parts = load_checkpoint(base_model, places)
    _refuse_untrainable(parts.family, base_model)  # a header that said nothing: what loaded decides
    for model in (parts.text_encoder, parts.unet, parts.vae):
        torch.nn.Module.to(model, torch.float32)
    return parts


def _refuse_untrainable(family: str | None, base_model: Path) -> None:
    if family is None or family == "sd15":
        return
    where = where_it_trains(family)
    raise FamilyNotSupported(
        f"The embedded trainer trains SD 1.5 LoRAs only, and the base model {base_model.name} is "
        f"{FAMILY_NAMES.get(family, family)} ({family}): train it with kohya or ai-toolkit ({', '.join(where)}).",
        {"family": family, "trainer": "embedded", "baseModel": base_model.name, "where": where})


# -- ControlNets

def load_controlnet(path: Path) -> torch.nn.Module:
    from diffusers import ControlNetModel

    if path.is_dir():
        try:
            return ControlNetModel.from_pretrained(path, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise _load_failed("ControlNet", path, exc) from None
    config = read_arch(path).controlnet
    try:
        state = read_state_dict(path)
    except Exception as exc:
        raise _load_failed("ControlNet", path, exc) from None
    if not convert.is_diffusers_controlnet(state):
        if not any(k.startswith(convert.CONTROLNET_PREFIX) or k.startswith("zero_convs.") for k in state):
            raise _load_failed("ControlNet", path, "neither the ControlNet 1.x nor the diffusers key layout")
        state = convert.controlnet_from_ldm(state, config)
    return _build(lambda: ControlNetModel.from_config(config), state, "ControlNet", path)
