"""The one small interface both generation backends (ComfyUI, embedded diffusers) implement.

The job runner (`sidecar.jobs.runner`) drives a `GenerationBackend` without knowing which one it
is, the way a diffusers pipeline drives any scheduler. This module owns the interface and the
shared value types only; each backend lives in its own package (`sidecar.comfyui`, `sidecar.engine`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

ModelFolder = Literal["checkpoints", "loras", "controlnet", "upscale_models", "diffusion_models"]


@dataclass
class BackendHealth:
    """What /health reports about a backend."""

    available: bool  # ComfyUI answers / the engine can run
    engine: str  # "comfyui" | "embedded"
    device: str | None = None  # "mps" | "cuda" | "cpu" | None when unknown
    dtypes: dict[str, str] = field(default_factory=dict)  # e.g. {"unet": "fp16", "vae": "fp32"}
    warnings: list[str] = field(default_factory=list)
    # What the backend holds in memory now (checkpoint, loras, controlnet, keepAlive, expiresAt); None
    # when it cannot say (ComfyUI has no API for it).
    loaded: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # versions, argv, loaded models ...


@dataclass
class RunContext:
    """Everything a backend needs to run (or follow) one job.

    `prompt_id` is set when the job was already handed to the backend before (daemon restart,
    retry after a WebSocket drop): the backend must then follow/reconcile that prompt, never
    submit it a second time unless it reports it lost (raise PromptLost).
    """

    job_id: str
    workflow: dict[str, Any]  # the filled API-format workflow
    output_path: Path  # where the final PNG must end up (write atomically: temp + rename)
    on_progress: Callable[[int, int], None]  # (step, total)
    on_prompt_id: Callable[[str], Awaitable[None]]  # persist the backend's id before waiting on it
    cancel_event: asyncio.Event  # set when the user cancels; stop within one step
    prompt_id: str | None = None
    pose_image: Path | None = None  # local file for the LoadImage slot, when the template has one
    # The graph as the backend will run it, when it differs from `workflow` (precision fitted to the
    # device, the pose image under the name the backend loads): recorded as the job's workflow.
    on_workflow: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    # Prompts ahead of this one in the backend's own queue (someone else's work), None once it runs.
    on_queued: Callable[[int | None], None] | None = None
    # Live previews: `preview_due()` says whether one would go out now (so a backend can skip making
    # it), `on_preview(step, total, image)` hands one over (a JPEG or PNG file's bytes). Both may be
    # called from a worker thread. None: previews are off.
    preview_due: Callable[[], bool] | None = None
    on_preview: Callable[[int, int, bytes], None] | None = None
    # Where the upscaled copy goes when the workflow has a print upscale step (`sidecar.upscaling`).
    upscaled_path: Path | None = None


@dataclass
class RunResult:
    output_path: Path
    upscaled_path: Path | None = None  # written when the workflow upscales its image
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class GenerationBackend(Protocol):
    """Failures are raised as `sidecar.errors.SidecarError` subclasses with a job-failure code
    (`JobFailed(code=...)`), cancellation as `sidecar.errors.JobCancelled`, a lost prompt as
    `sidecar.errors.PromptLost` (the runner re-queues once, then fails the job)."""

    name: str  # "comfyui" | "embedded"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> BackendHealth: ...

    async def known_node_types(self) -> set[str] | None:
        """Class types this backend can run (ComfyUI: /object_info keys); None when unknown."""
        ...

    async def validate(self, workflow: dict[str, Any]) -> None:
        """Refuse at submit time what cannot run (node_not_supported, sampler_not_supported)."""
        ...

    async def list_models(self, folder: ModelFolder) -> list[str] | None:
        """File names in a model folder (e.g. "spyke.safetensors"); None when unknown."""
        ...

    def models_dir(self, folder: ModelFolder) -> Path | None:
        """The local folder where this backend finds models of that kind, when it has one."""
        ...

    async def run(self, ctx: RunContext) -> RunResult: ...

    async def unload(self) -> None:
        """Give the device memory back (training is about to take the device). Best effort: a
        backend that cannot be reached has nothing to give back."""
        ...
