"""`EmbeddedBackend`: the in-process diffusers engine behind the `GenerationBackend` interface.

Torch runs in one dedicated worker thread (one job at a time, models stay warm there); the event
loop only awaits it, so /health and the job list answer while a job renders. The thread checks the
job's cancel event (and a stop flag for shutdown) before every model call. torch is imported when
the backend starts, not when this module is imported, so a daemon without the [engine] extra still
starts and says what is missing.

Warm models are given back after `keep_alive` idle seconds, as Ollama does (0: after each job, -1: never):
on a 16 GB unified-memory Mac a checkpoint left loaded is memory the rest of the machine cannot use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sidecar import atomic
from sidecar.backend import BackendHealth, ModelFolder, RunContext, RunResult
from sidecar.config import Settings
from sidecar.durations import format_duration
from sidecar.engine.interpreter import RenderJob, UpscaleJob, interpret
from sidecar.errors import EngineUnavailable, JobCancelled, JobFailed, SidecarError
from sidecar.inputs import input_dir, is_ours
from sidecar.nodes import SUPPORTED_NODES

log = logging.getLogger("sidecar.engine")


class EmbeddedBackend:
    name = "embedded"
    # The model families this engine loads (SD 1.5, and SDXL with its two text encoders): a profile that allows
    # more (Flux) still refuses the others here, with family_not_supported.
    families = ("sd15", "sdxl")

    def __init__(self, settings: Settings):
        self.settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._plan: Any = None  # device.DevicePlan once started
        self._cache: Any = None  # cache.ModelCache
        self._renderer: Any = None
        self._problem: SidecarError | None = None
        self._versions: dict[str, str] = {}
        self.keep_alive = settings.keep_alive
        self._uses = 0  # jobs started so far: an idle unload scheduled before a newer job is stale
        self._idle_timer: asyncio.TimerHandle | None = None
        self._expires_at: float | None = None  # wall-clock time of the scheduled unload
        self.idle_unloads = 0  # for /health and tests

    # -- lifecycle
    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-engine")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._init)
            self._problem = None
        except SidecarError as exc:
            self._problem = exc
            log.error("embedded engine unavailable: %s", exc.message)
        except ImportError as exc:
            self._problem = EngineUnavailable(
                f"The embedded engine needs torch, diffusers and transformers ({exc.name or exc} is missing): "
                "install them with `pip install -e '.[engine]'`.", {"missing": exc.name})
            log.error("embedded engine unavailable: %s", self._problem.message)

    def _init(self) -> None:
        import diffusers
        import torch
        import transformers

        from sidecar.engine.cache import ModelCache
        from sidecar.engine.device import plan_device
        from sidecar.engine.models import TokenizerPlaces
        from sidecar.engine.render import Renderer

        self._plan = plan_device(self.settings.device)
        places = TokenizerPlaces(self.settings.models_path, self.settings.comfyui_dir, self.settings.data_dir / "cache")
        self._cache = ModelCache(self._plan, places)
        self._renderer = Renderer(self._cache)
        self._versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "transformers": transformers.__version__}
        log.info("embedded engine on %s (%s), models in %s", self._plan.device,
                 ", ".join(f"{k} {v}" for k, v in self._plan.dtypes().items()), self.settings.models_path)

    async def stop(self) -> None:
        self._cancel_idle()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # A job still rendering was told to stop by its run(); wait for the thread to finish the step.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def unload(self) -> None:
        """Free the cached models (e.g. before training takes the device)."""
        self._cancel_idle()
        if self._executor is not None and self._cache is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._cache.unload)

    # -- keep_alive
    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer, self._expires_at = None, None

    def _schedule_idle_unload(self) -> None:
        """After a job: unload after keep_alive idle seconds (or now for 0; never for -1)."""
        self._cancel_idle()
        if self.keep_alive < 0 or self._executor is None or self._cache is None:
            return
        uses = self._uses
        loop = asyncio.get_running_loop()
        self._expires_at = time.time() + self.keep_alive
        self._idle_timer = loop.call_later(self.keep_alive, lambda: loop.create_task(self._idle_unload(uses)))

    async def _idle_unload(self, uses: int) -> None:
        self._idle_timer, self._expires_at = None, None
        executor = self._executor
        if executor is None or uses != self._uses:
            return

        def unload_if_idle() -> bool:
            # In the engine thread, behind any job queued meanwhile: a job started since keeps its models.
            if uses != self._uses or self._cache.base is None and not self._cache.loaded()["controlnet"]:
                return False
            self.idle_unloads += 1  # before: /health must never see the models gone and the count not
            self._cache.unload()
            return True

        if await asyncio.get_running_loop().run_in_executor(executor, unload_if_idle):
            log.info("embedded engine idle for %s: models unloaded (keep_alive)", format_duration(self.keep_alive))

    # -- what the daemon asks
    async def health(self) -> BackendHealth:
        if self._plan is None:
            problem = self._problem.message if self._problem else "the engine has not started"
            return BackendHealth(available=False, engine=self.name, warnings=[problem])
        warnings = [self._problem.message] if self._problem else []
        if self._plan.device == "cpu":
            warnings.append("no GPU (MPS/CUDA) found: the embedded engine runs on the CPU")
        loaded = self._cache.loaded()
        models = {
            "checkpoint": loaded["checkpoint"], "loras": loaded["loras"], "controlnet": loaded["controlnet"],
            "keepAlive": format_duration(self.keep_alive),
            "expiresAt": (_iso(self._expires_at) if self._expires_at is not None
                          and (loaded["checkpoint"] or loaded["controlnet"]) else None),
        }
        return BackendHealth(
            available=self._problem is None, engine=self.name, device=self._plan.device,
            dtypes=self._plan.dtypes(), warnings=warnings, loaded=models,
            extra={"loaded": loaded, "idleUnloads": self.idle_unloads, "modelsDir": str(self.settings.models_path),
                   **self._versions},
        )

    async def known_node_types(self) -> set[str] | None:
        return set(SUPPORTED_NODES)

    async def validate(self, workflow: dict[str, Any]) -> None:
        interpret(workflow)

    async def list_models(self, folder: ModelFolder) -> list[str] | None:
        from sidecar.engine.models import list_models

        return await asyncio.to_thread(list_models, self.settings.models_path, folder)

    def models_dir(self, folder: ModelFolder) -> Path | None:
        return self.settings.models_path / folder

    # -- running a job
    async def run(self, ctx: RunContext) -> RunResult:
        if self._problem is not None or self._executor is None:
            raise self._problem or EngineUnavailable("The embedded engine is not started.")
        job = interpret(ctx.workflow)
        if isinstance(job, UpscaleJob):
            return await self._run_upscale_only(job, ctx)
        if ctx.cancel_event.is_set():
            raise JobCancelled()
        stop = threading.Event()  # set when the daemon stops mid-job
        cancel = ctx.cancel_event
        self._cancel_idle()
        self._uses += 1

        def should_stop() -> bool:
            # Read from the worker thread: is_set() only reads a flag, which is safe across threads,
            # and it sees a cancel the moment the event loop sets it (no hop back through the loop).
            return stop.is_set() or cancel.is_set()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._run_job, job, ctx, should_stop)
        except asyncio.CancelledError:
            stop.set()  # let the thread end at its next step
            raise
        finally:
            if stop.is_set():
                pass
            elif self.keep_alive == 0:
                await self._idle_unload(self._uses)  # before the job is reported done: nothing stays loaded
            else:
                self._schedule_idle_unload()
        return RunResult(output_path=ctx.output_path, device=self._plan.device,
                         upscaled_path=ctx.upscaled_path if job.upscale_model and ctx.upscaled_path else None,
                         extra={"dtypes": self._plan.dtypes(), "loaded": self._cache.loaded()})

    async def _run_upscale_only(self, job: UpscaleJob, ctx: RunContext) -> RunResult:
        """A job that only upscales an image it was given: the result is the job's image."""
        if ctx.cancel_event.is_set():
            raise JobCancelled()
        stop = threading.Event()

        def work() -> None:
            from PIL import Image

            with Image.open(self._input_image(job.image, ctx)) as src:
                src.load()
                image = src.convert("RGB")
            upscaler = self._load_upscaler(job.model)
            self._upscale(job.model, upscaler, image, ctx, lambda: stop.is_set() or ctx.cancel_event.is_set(),
                          ctx.output_path)

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except asyncio.CancelledError:
            stop.set()
            raise
        return RunResult(output_path=ctx.output_path, device=self._plan.device)

    def _run_job(self, job: RenderJob, ctx: RunContext, should_stop: Callable[[], bool]) -> None:
        """In the worker thread: load (or reuse) models, render, write the PNG atomically."""
        from sidecar.engine.cache import LoraUse
        from sidecar.engine.models import resolve
        from sidecar.engine.render import Hooks

        models_path = self.settings.models_path
        checkpoint = resolve(models_path, "checkpoints", job.checkpoint)
        loras = [LoraUse(resolve(models_path, "loras", name), sm, sc) for name, sm, sc in job.loras]
        controls = job.controls_positive + job.controls_negative
        controlnet = resolve(models_path, "controlnet", controls[0].controlnet) if controls else None
        hints = {c.image: self._input_image(c.image, ctx) for c in controls}
        init = self._input_image(job.init_image, ctx) if job.init_image is not None else None
        unet_dtype = self._plan.compute_dtype(job.unet_dtype)
        upscaler = (self._load_upscaler(job.upscale_model)
                    if job.upscale_model is not None and ctx.upscaled_path is not None else None)
        if should_stop():
            raise JobCancelled()
        try:
            base = self._cache.get_base(checkpoint, unet_dtype, loras)
            image = self._renderer.render(job, base, hints, controlnet,
                                          Hooks(on_step=ctx.on_progress, should_stop=should_stop,
                                                preview_due=ctx.preview_due, on_preview=ctx.on_preview), init)
        except (SidecarError, JobCancelled):
            raise
        except Exception as exc:  # torch/diffusers errors: a failed job with the reason, not a crash
            log.exception("job %s failed in the engine", ctx.job_id)
            raise JobFailed(f"The embedded engine failed: {type(exc).__name__}: {exc}",
                            {"exception": type(exc).__name__}, code="execution_error") from None
        _write_png(image, ctx.output_path, ctx.workflow)
        if job.upscale_model is not None and ctx.upscaled_path is not None:
            self._upscale(job.upscale_model, upscaler, image, ctx, should_stop)

    def _load_upscaler(self, model: str) -> Any:
        """In the worker thread: the upscale model, read before anything is rendered (a file the engine
        cannot run fails the job before minutes of sampling, not after)."""
        from sidecar.engine.models import resolve
        from sidecar.engine.sr_arch import UnsupportedUpscaler
        from sidecar.engine.upscale import load_upscaler

        path = resolve(self.settings.models_path, "upscale_models", model)
        try:
            return load_upscaler(path)
        except (UnsupportedUpscaler, OSError, RuntimeError, ValueError) as exc:
            raise JobFailed(f"Upscale model {model!r} cannot run on the embedded engine: {exc}. It runs ESRGAN "
                            "(RRDBNet) and Real-ESRGAN compact (SRVGGNetCompact) models; other architectures run "
                            "on ComfyUI.", {"model": model, "field": "upscaleModel"},
                            code="upscale_model_unsupported") from None

    def _upscale(self, model: str, upscaler: Any, image: Any, ctx: RunContext, should_stop: Callable[[], bool],
                 target: Path | None = None) -> None:
        """In the worker thread: the print upscale of the image just saved (`sidecar.engine.upscale`)."""
        from sidecar.engine.upscale import upscale_image

        started = time.monotonic()
        try:
            big = upscale_image(upscaler, image, tile=self.settings.upscale_tile,
                                overlap=self.settings.upscale_tile_overlap, device=self._plan.device,
                                should_stop=should_stop)
        except InterruptedError:
            raise JobCancelled() from None
        except Exception as exc:  # torch errors (out of memory...): a failed job with the reason
            log.exception("job %s: the upscale failed", ctx.job_id)
            raise JobFailed(f"The print upscale failed: {type(exc).__name__}: {exc}",
                            {"model": model, "exception": type(exc).__name__}, code="execution_error") from None
        log.info("job %s: upscaled x%d with %s (%s) to %dx%d in %.1f s", ctx.job_id, upscaler.scale, model,
                 upscaler.architecture, big.width, big.height, time.monotonic() - started)
        target = target or ctx.upscaled_path
        assert target is not None
        _write_png(big, target, ctx.workflow)

    def _input_image(self, name: str, ctx: RunContext) -> Path:
        # A pose job's LoadImage names the pose file's basename and the job carries the real path; an init
        # image (and anything else) is a file in the daemon's input folder (`sidecar.jobs.init_image`).
        own = input_dir(self.settings.data_dir) / name
        pose = ctx.pose_image
        candidates = [pose] if pose is not None and pose.name == name else []
        candidates.append(own)
        if pose is not None and not is_ours(name):
            candidates.append(pose)  # a single LoadImage is the pose, whatever it is called
        for path in candidates:
            if path.is_file():
                return path
        raise JobFailed(f"LoadImage: image {name!r} not found (no pose image with the job, nothing in "
                        f"{self.settings.data_dir / 'input'}).", {"image": name}, code="execution_error")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_png(image: Any, path: Path, workflow: dict[str, Any]) -> None:
    """Temp file + rename, so a reader never sees half a PNG. The workflow rides along in a `prompt`
    text chunk, where ComfyUI puts it, so the image alone says how it was made."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", json.dumps(workflow))
    atomic.write_with(path, lambda fh: image.save(fh, format="PNG", pnginfo=info))
