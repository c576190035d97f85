"""A scripted GenerationBackend for runner tests that need exact control of timing (FIFO order,
cancel at a known moment, a lost prompt). Real backends are tested against the fake ComfyUI and the
tiny-model engine; this one only exercises the runner's bookkeeping through the HTTP API.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

from PIL import Image

from sidecar.backend import BackendHealth, RunContext, RunResult
from sidecar.errors import JobCancelled, JobFailed, PromptLost


class ScriptedBackend:
    name = "scripted"

    def __init__(self, models: dict[str, list[str]] | None = None, folders: dict[str, Path] | None = None):
        self.models = models or {"checkpoints": ["anything-v5.safetensors"], "loras": ["spyke_plasma_v1.safetensors"],
                                 "controlnet": ["control_v11p_sd15_openpose.pth"]}
        # Model kinds served from a real folder (as the embedded engine and a managed ComfyUI do).
        self.folders = folders or {}
        self.started: list[str] = []  # job ids in the order they started running
        self.gates: dict[str, asyncio.Event] = {}  # job id -> released when the test says so
        self.auto_release = True
        # per run: "ok" | "lose" | "fail" | "enospc" (the image write finds the disk full) | "die" (raises
        # a BaseException no handler expects, killing whatever awaits it) (consumed in order)
        self.script: list[str] = []
        self.active = 0  # jobs inside run() now, and the most ever at once
        self.most_active = 0
        self.runs = 0
        self.unloads = 0  # times the daemon asked for the device memory back

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> BackendHealth:
        return BackendHealth(available=True, engine="scripted", device="cpu")

    async def known_node_types(self) -> set[str] | None:
        return None

    async def validate(self, workflow: dict[str, Any]) -> None: ...

    async def list_models(self, folder: str) -> list[str] | None:
        if folder in self.folders:
            path = self.folders[folder]
            return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
        return self.models.get(folder, [])

    def models_dir(self, folder: str) -> Path | None:
        return self.folders.get(folder)

    async def unload(self) -> None:
        self.unloads += 1

    def release(self, job_id: str) -> None:
        self.gates.setdefault(job_id, asyncio.Event()).set()

    async def run(self, ctx: RunContext) -> RunResult:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await self._run(ctx)
        finally:
            self.active -= 1

    async def _run(self, ctx: RunContext) -> RunResult:
        self.runs += 1
        self.started.append(ctx.job_id)
        action = self.script.pop(0) if self.script else "ok"
        if ctx.prompt_id is None:
            await ctx.on_prompt_id(f"p-{ctx.job_id}-{self.runs}")
        gate = self.gates.setdefault(ctx.job_id, asyncio.Event())
        if self.auto_release:
            gate.set()
        total = 3
        for step in range(1, total + 1):
            ctx.on_progress(step, total)
            waiter = asyncio.ensure_future(gate.wait())
            canceller = asyncio.ensure_future(ctx.cancel_event.wait())
            await asyncio.wait({waiter, canceller}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            canceller.cancel()
            if ctx.cancel_event.is_set():
                raise JobCancelled()
        if action == "lose":
            raise PromptLost("The backend lost the prompt.")
        if action == "fail":
            raise JobFailed("KSampler failed: boom", {"node_id": "6"}, code="execution_error")
        if action == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(ctx.output_path))
        if action == "die":
            raise WorkerKilled("a fault no handler expects")
        w = ctx.workflow
        # An img2img workflow has no EmptyLatentImage (the init image sets the size): the tests use 64x96.
        latent = next((n["inputs"] for n in w.values() if n["class_type"] == "EmptyLatentImage"),
                      {"width": 64, "height": 96})
        Image.new("RGB", (latent["width"], latent["height"]), (200, 120, 40)).save(ctx.output_path)
        return RunResult(output_path=ctx.output_path, device="cpu")


class WorkerKilled(BaseException):
    """Not an Exception: stands for whatever could still end the runner's worker task."""
