"""Admission of a training run: what is checked before a run is queued (profile limits, the trainer
engine installed or configured, the base model found, the preset resolved and the quality gate passed). Pure checks that raise our coded errors; the
manager (`manager.py`) calls them and queues what passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path

from sidecar.backend import GenerationBackend
from sidecar.config import Settings
from sidecar.errors import CheckpointNotFound, DatasetInvalid, EngineUnavailable, InvalidField
from sidecar.profiles import Profile
from sidecar.training import presets
from sidecar.training.wire import TrainRequest
from sidecar.userfiles import user_path


def trainer_of(req: TrainRequest, settings: Settings) -> str:
    """The request's trainer: `trainer`, or its alias `engine`; else kohya when kohya_dir is configured or the
    run is remote, else embedded."""
    if req.trainer and req.engine and req.trainer != req.engine:
        raise InvalidField(f"trainer {req.trainer!r} and engine {req.engine!r} differ; engine is an alias of trainer: "
                           "give one of them.", {"field": "trainer", "value": req.trainer, "engine": req.engine})
    chosen = req.trainer or req.engine
    if chosen:
        return chosen
    return "kohya" if settings.kohya_dir is not None or req.remote is not None else "embedded"


def check_request(req: TrainRequest, settings: Settings, profile: Profile) -> str:
    """The request's limits; returns the trainer engine it will run on ("remote" for a run on another machine)."""
    # The dataset's path first: a name the file system cannot hold is the request's mistake, whatever else
    # (the base model, the placement) would be refused after it.
    user_path(req.dataset_dir, "datasetDir", DatasetInvalid)
    trainer = trainer_of(req, settings)
    if req.batch_size is not None:
        profile.check_batch(req.batch_size, training=True)
    if req.family in (None, "sd15"):  # SDXL's and Flux's sizes are their own (`placement.check`)
        profile.check_train_resolution(req.resolution)
    if req.resolution % 64:
        raise InvalidField(f"resolution must be a multiple of 64, got {req.resolution}.",
                           {"field": "resolution", "value": req.resolution})
    if req.remote is not None:
        if trainer == "embedded":
            raise InvalidField("A remote run trains with kohya's sd-scripts or ai-toolkit on the machine; leave out "
                               "engine or give 'kohya' or 'ai-toolkit'.", {"field": "engine", "value": trainer})
        return "remote"  # nothing needs installing here
    check_engine(settings, trainer)
    return trainer


def check_remote(req: TrainRequest, settings: Settings) -> dict | None:
    """The run's resolved remote settings (request over configuration), checked; None for a local run."""
    if req.remote is None:
        return None
    from sidecar.remote.providers import resolve

    return resolve(settings.remote, req.remote)


def check_engine(settings: Settings, engine: str) -> None:
    if engine == "kohya":
        from sidecar.training.kohya import require

        require(settings)
        return
    if engine == "ai-toolkit":
        from sidecar.training import ai_toolkit

        ai_toolkit.require(settings)
        return
    missing = [m for m in ("torch", "diffusers", "peft", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise EngineUnavailable(
            f"The embedded trainer needs {', '.join(missing)}: install plasma-sidecar[engine], or "
            "configure kohya_dir and train with engine 'kohya'.", {"missing": missing})


# dataset dir, trigger word, preset, family -> raises `dataset_not_ready` with the findings
# (`sidecar.dataprep.gate`, handed in by the app: it sits a layer above the training package)
Gate = Callable[[Path, str, str | None, str], Awaitable[None]]


async def preset_and_gate(req: TrainRequest, family: str, trainer: str, trigger: str, gate: Gate | None) -> TrainRequest:
    """The request with its preset resolved into its own values (for the family and trainer the run was
    placed on), after the quality gate passed it (or `force` skipped the gate)."""
    req = presets.apply(req, family, trainer, trigger)
    if gate is not None and not req.force:
        await gate(Path(req.dataset_dir), trigger, req.preset, family)
    return req


async def find_base_model(settings: Settings, backend: GenerationBackend | None, name: str) -> Path:
    if "/" in name or "\\" in name or name.startswith("."):
        raise InvalidField("checkpoint must be a file name, not a path.", {"field": "checkpoint"})
    dirs = base_model_dirs(settings, backend)
    for d in dirs:
        for candidate in (d / name, d / Path(name).stem):
            if await asyncio.to_thread(candidate.exists):
                return candidate
    raise CheckpointNotFound(
        f"Base model {name!r} was not found in {', '.join(str(d) for d in dirs) or 'any models dir'}.",
        {"checkpoint": name, "searched": [str(d) for d in dirs]})


def base_model_dirs(settings: Settings, backend: GenerationBackend | None) -> list[Path]:
    """Where base checkpoints are looked up: the backend's folder, ComfyUI's, then ours."""
    dirs: list[Path] = []
    if backend is not None:
        with contextlib.suppress(Exception):
            d = backend.models_dir("checkpoints")
            if d is not None:
                dirs.append(d)
    if settings.comfyui_dir is not None:
        dirs.append(settings.comfyui_dir / "models" / "checkpoints")
    dirs.append(settings.models_path / "checkpoints")
    return list(dict.fromkeys(dirs))
