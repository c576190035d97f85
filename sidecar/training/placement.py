"""Where a run of each trainer and family can train, checked before anything is queued or rented.

The embedded trainer trains SD 1.5 here. kohya and ai-toolkit train every family, but SDXL and Flux need a
GPU: a remote machine (vast.ai or an SSH host), or this machine when its device is CUDA and its profile
allows the family. Anything else is 400 `family_not_supported`, naming the family and where it can train.
The family is the request's, else the base model file's (`sidecar.families`, from its header).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Settings
from sidecar.errors import FamilyNotSupported, InvalidField
from sidecar.families import family_of_file
from sidecar.profiles import Profile, where_it_trains
from sidecar.training.wire import TrainRequest

BASE_SIZE = {"sd15": 512, "sdxl": 1024, "flux": 1024}  # each family's training size (design.md: the gate's)
# ai-toolkit's Flux example (config/examples/train_lora_flux_24gb.yaml) trains this hub model: the default base of
# an ai-toolkit Flux run that names none.
AI_TOOLKIT_FLUX_BASE = "black-forest-labs/FLUX.1-dev"
TRAINER_FAMILIES = {"embedded": ("sd15",), "kohya": ("sd15", "sdxl", "flux"), "ai-toolkit": ("sd15", "sdxl", "flux")}


@dataclass(frozen=True)
class Placement:
    trainer: str
    family: str
    resolution: int
    warnings: tuple[str, ...] = ()
    base_model_ref: str | None = None


def _is_here(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for this file system, a hub id: not a file here
        return False


def family_of(req: TrainRequest, base: Path | None) -> tuple[str, list[str]]:
    """(family, warnings). Blocking (reads the base model's header)."""
    if req.family is not None:
        return req.family, []
    if base is not None and _is_here(base):
        reading = family_of_file(base)
        if reading.known is not None:
            return reading.known, []
        return "sd15", [f"the family of {base.name} could not be read ({reading.reason}): training it as sd15; "
                        "give family to say otherwise"]
    if req.base_model is None:
        return "sd15", []  # no base model found (an estimate): the default family
    raise InvalidField(f"family is needed for the base model {req.base_model!r} (not a file here to read it from): "
                       "give family sd15, sdxl or flux.", {"field": "family", "baseModel": req.base_model})


def check(req: TrainRequest, trainer: str, family: str, profile: Profile, device: str) -> Placement:
    """`device`: what this machine trains on (cuda, mps, cpu); only a local run asks it."""
    if family not in TRAINER_FAMILIES.get(trainer, ("sd15",)):
        raise FamilyNotSupported(
            f"The {trainer} trainer does not train {family} LoRAs; train them with kohya or ai-toolkit "
            f"({', '.join(where_it_trains(family))}).",
            {"family": family, "trainer": trainer, "where": where_it_trains(family)})
    resolution = req.resolution if "resolution" in req.model_fields_set else BASE_SIZE[family]
    if req.remote is None and family != "sd15" and (not profile.allows(family) or device != "cuda"):
        why = (f"the profile {profile.name} does not allow it" if not profile.allows(family)
               else f"this machine trains on {device}, not CUDA")
        raise FamilyNotSupported(
            f"A {family} LoRA needs a GPU and {why}: train it with remote vast or ssh, or on a CUDA machine whose "
            f"profile allows {family}.",
            {"family": family, "profile": profile.name, "device": device, "where": where_it_trains(family)})
    if resolution % 64:
        raise InvalidField(f"resolution must be a multiple of 64, got {resolution}.",
                           {"field": "resolution", "value": resolution})
    base = req.base_model
    if family == "flux" and base is None:
        if trainer != "ai-toolkit":
            raise InvalidField("kohya's Flux training needs baseModel: the path of the Flux model on the training "
                               "machine, with clip_l.safetensors, t5xxl_fp8_e4m3fn.safetensors and ae.safetensors "
                               "beside it.", {"field": "baseModel", "family": family, "trainer": trainer})
        base = AI_TOOLKIT_FLUX_BASE
    return Placement(trainer=trainer, family=family, resolution=resolution, base_model_ref=base)


def fit_remote(resolved: dict | None, where: Placement) -> None:
    """A rented GPU must hold the run: vast's least GPU memory is raised to what the family needs there."""
    from sidecar.training.memory_plan import min_memory_gb

    if resolved is not None and resolved.get("provider") == "vast":
        need = min_memory_gb(where.trainer, where.family)
        resolved["min_gpu_memory_gb"] = max(float(resolved.get("min_gpu_memory_gb") or 0), need)


async def place(settings: Settings, profile: Profile, req: TrainRequest, engine: str, base: Path) -> Placement:
    """Which trainer and family, and whether they can train where the request asks (400 if not)."""
    from sidecar.training.admission import trainer_of
    from sidecar.training.kohya import training_device

    family, warnings = await asyncio.to_thread(family_of, req, base)
    device = "cuda" if engine == "remote" else await asyncio.to_thread(training_device, settings)
    where = check(req, trainer_of(req, settings), family, profile, device)
    return Placement(where.trainer, where.family, where.resolution, tuple(warnings), where.base_model_ref)
