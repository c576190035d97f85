"""`ComfyBackend`: the `GenerationBackend` that runs jobs on a ComfyUI server.

Attach mode (`comfyui_url`) talks to a ComfyUI someone else runs; managed mode (`comfyui_dir` +
`comfyui_python`) also owns the process through `ComfySupervisor`. One job's life: wait for ComfyUI,
place the pose image, persist our prompt id, post, follow (`follow.py`), fetch the image (`images.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from sidecar import atomic
from sidecar.backend import BackendHealth, ModelFolder, RunContext, RunResult
from sidecar.comfyui.client import ComfyClient, ComfyRefused, PromptWatch
from sidecar.comfyui.follow import FollowOptions, PromptFollower
from sidecar.comfyui.images import fetch_image, fetch_upscaled
from sidecar.comfyui.outputs import per_job_prefix, remove_outputs
from sidecar.comfyui.pose import place_inputs, place_pose, set_pose
from sidecar.comfyui.precision import fit_to_device, server_dtypes, unet_weight_dtype, vae_warning
from sidecar.comfyui.supervisor import ComfySupervisor
from sidecar.config import Settings
from sidecar.errors import (
    ComfyUnavailable,
    JobCancelled,
    NodeNotSupported,
    PromptLost,
    SamplerNotSupported,
    SidecarError,
)
from sidecar.graph import Graph
from sidecar.inputs import input_dir

log = logging.getLogger("sidecar.comfyui")

# Loader node and input whose enum lists a model folder (for servers without GET /models/{folder}).
LOADER_ENUMS: dict[str, tuple[str, str]] = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "loras": ("LoraLoader", "lora_name"),
    "controlnet": ("ControlNetLoader", "control_net_name"),
    "diffusion_models": ("UNETLoader", "unet_name"),
}
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
MODEL_SUFFIXES = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
HEALTH_TIMEOUT = 2.0  # /health must stay instant even when ComfyUI hangs
OBJECT_INFO_TTL = 30.0
CLIENT_ID_FILE = "comfyui-client-id"


class ComfyBackend:
    name = "comfyui"

    def __init__(self, settings: Settings, *, client_id: str | None = None,
                 reconnect_backoff: tuple[float, float] = (0.05, 2.0),
                 restart_backoff: tuple[float, float] = (1.0, 30.0)):
        self.settings = settings
        self.managed = settings.comfyui_url is None and settings.comfyui_dir is not None
        self.comfyui_dir = settings.comfyui_dir
        self.client = ComfyClient(settings.comfyui_base_url, client_id=client_id,
                                  backoff_initial=reconnect_backoff[0], backoff_max=reconnect_backoff[1],
                                  previews=settings.previews)
        self.supervisor = (ComfySupervisor(settings, backoff_initial=restart_backoff[0],
                                           backoff_max=restart_backoff[1]) if self.managed else None)
        self.options = FollowOptions(
            poll_interval=settings.history_poll_interval,
            inactivity_timeout=settings.job_inactivity_timeout,
            unavailable_deadline=settings.comfyui_unavailable_deadline,
        )
        self._fixed_client_id = client_id
        self._classes: dict[str, tuple[float, dict[str, Any]]] = {}  # node class -> (fetched at, spec)
        self._refresh: asyncio.Task[Any] | None = None
        self._device: str | None = None
        # ComfyUI's copies of our images are removed once fetched, where its folder is known (no API for it).
        self.delete_outputs = settings.comfyui_delete_outputs and self.comfyui_dir is not None

    # -- lifecycle
    async def start(self) -> None:
        if self._fixed_client_id is None:
            # The same client_id across daemon restarts: ComfyUI sends a prompt's messages to the socket
            # with the poster's id, so a restarted daemon still hears the prompt it left running.
            self.client.client_id = await asyncio.to_thread(stable_client_id, self.settings.data_dir)
        if settings_wants_deletion_without_dir(self.settings):
            log.info("ComfyUI's folder is unknown (attach mode without comfyui_dir): the copies it keeps in its "
                     "output/ folder are not removed (ComfyUI has no API to delete a file)")
        # Neither waits for ComfyUI: the daemon answers /health at once and jobs wait for ComfyUI.
        if self.supervisor is not None:
            await self.supervisor.start()
        await self.client.start()

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, SidecarError, OSError):
                await self._refresh
        await self.client.close()
        if self.supervisor is not None:
            await self.supervisor.stop()

    async def unload(self) -> None:
        """Ask ComfyUI to drop its models before training takes the device (16 GB of unified memory
        cannot hold both). A ComfyUI that is down holds nothing."""
        try:
            await self.client.free()
        except (SidecarError, OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("ComfyUI did not take /free (%s); nothing to unload", exc)

    # -- what the API asks
    async def health(self) -> BackendHealth:
        extra: dict[str, Any] = {"url": self.client.base_url, "mode": "managed" if self.managed else "attach",
                                 "websocket": self.client.connected}
        failure = None
        if self.supervisor is not None:
            failure = self.supervisor.failure
            extra.update(pid=self.supervisor.pid, starts=self.supervisor.starts, command=self.supervisor.command,
                         lastExit=self.supervisor.last_exit,
                         startupFailure=failure.as_dict() if failure is not None else None)
        try:
            stats = await self.client.system_stats(timeout=HEALTH_TIMEOUT)
        except ComfyUnavailable as exc:
            if failure is not None:
                warning = failure.message()  # why it is down, not just that it is
            elif self.managed:
                warning = f"ComfyUI is starting or restarting (managed mode): {exc.message}"
            else:
                warning = f"ComfyUI does not answer at {self.client.base_url}: {exc.message}"
            return BackendHealth(available=False, engine=self.name, device=self._device,
                                 warnings=[warning], extra=extra)
        system = stats.get("system") or {}
        argv = [str(a) for a in system.get("argv") or []]
        devices = stats.get("devices") or [{}]
        self._device = devices[0].get("type")
        warning = vae_warning(self._device, argv)
        extra.update(comfyuiVersion=system.get("comfyui_version"), argv=argv,
                     pytorchVersion=system.get("pytorch_version"), deviceName=devices[0].get("name"),
                     unetWeightDtype=unet_weight_dtype(self._device, argv))
        return BackendHealth(
            available=True, engine=self.name, device=self._device, dtypes=server_dtypes(self._device, argv),
            warnings=[warning] if warning else [], extra=extra,
        )

    async def known_node_types(self) -> set[str] | None:
        # Template (re)loads only: the one place the whole /object_info is worth its 0.5-0.8 MB.
        info = await self.client.object_info()
        now = time.monotonic()
        self._classes.update({name: (now, spec) for name, spec in info.items() if isinstance(spec, dict)})
        return set(info)

    async def validate(self, workflow: dict[str, Any]) -> None:
        """Refuse at submit time what this ComfyUI cannot run; ComfyUI's own validation at POST time
        remains the authority (a ComfyUI that is down is not asked here)."""
        graph = Graph(workflow)
        wanted = graph.class_types()
        try:
            info = await self._class_specs(wanted)
        except ComfyUnavailable:
            return
        unknown = {node.id: node.class_type for node in graph if node.class_type not in info}
        if unknown:
            names = ", ".join(sorted(set(map(str, unknown.values()))))
            raise NodeNotSupported(
                f"ComfyUI at {self.client.base_url} has no node type {names}; install the custom node or "
                "change the workflow.", {"nodes": unknown},
            )
        for node in graph.of_type(*SAMPLER_NODES):
            node_id = node.id
            required = info[node.class_type].get("input", {}).get("required", {})
            for field in ("sampler_name", "scheduler"):
                value = node.inputs.get(field)
                allowed = required.get(field, [None])[0]
                if isinstance(value, str) and isinstance(allowed, list) and value not in allowed:
                    raise SamplerNotSupported(
                        f"ComfyUI has no {field} {value!r}. Known: {', '.join(map(str, allowed))}.",
                        {"field": field, "value": value, "node": node_id, "allowed": allowed},
                    )

    def _raise_if_given_up(self) -> None:
        """A managed ComfyUI that keeps dying at start-up is not restarted: the job fails now, saying why."""
        sup = self.supervisor
        if sup is not None and sup.gave_up.is_set() and sup.failure is not None:
            raise ComfyUnavailable(sup.failure.message(), {"url": self.client.base_url, "mode": "managed",
                                                           **sup.failure.as_dict()})

    async def _class_specs(self, names: set[str]) -> dict[str, dict[str, Any]]:
        """The `/object_info` entries of `names`. A known class answers at once (refreshed in the
        background once older than OBJECT_INFO_TTL); an unknown one is asked with `/object_info/{class}`
        (a few KB, where the whole document is 0.5-0.8 MB and 0.2-0.7 s): the submit path never waits
        on the whole document. A class ComfyUI does not have is asked again next time (a custom node
        may have been installed since)."""
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        missing, stale = [], []
        for name in names:
            cached = self._classes.get(name)
            if cached is None:
                missing.append(name)
                continue
            found[name] = cached[1]
            if now - cached[0] > OBJECT_INFO_TTL:
                stale.append(name)
        if stale and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._fetch_classes(stale), name="comfyui-object-info")
        if missing:
            found.update(await self._fetch_classes(missing))
        return found

    async def _fetch_classes(self, names: list[str]) -> dict[str, dict[str, Any]]:
        answers = await asyncio.gather(*(self.client.object_info(name) for name in names), return_exceptions=True)
        found: dict[str, dict[str, Any]] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, ComfyUnavailable):
                    if self._classes.get(name) is None:
                        raise answer
                    continue  # a background refresh: the known spec stays
                raise answer
            spec = answer.get(name) if isinstance(answer, dict) else None
            if isinstance(spec, dict):
                self._classes[name] = (time.monotonic(), spec)
                found[name] = spec
            else:
                self._classes.pop(name, None)  # ComfyUI answers {} for a class it does not have (any more)
        return found

    async def list_models(self, folder: ModelFolder) -> list[str] | None:
        try:
            names = await self.client.models(folder)
            if names is None and folder in LOADER_ENUMS:
                node, field = LOADER_ENUMS[folder]
                spec = (await self.client.object_info(node)).get(node, {})
                enum = spec.get("input", {}).get("required", {}).get(field, [[]])[0]
                names = [str(n) for n in enum] if isinstance(enum, list) else None
            return names
        except ComfyUnavailable:
            # While ComfyUI (re)starts, a known install dir still says what is there: jobs can queue.
            directory = self.models_dir(folder)
            names = await asyncio.to_thread(_list_model_files, directory) if directory is not None else None
            if names is None:
                raise
            return names

    async def model_metadata(self, folder: ModelFolder, name: str) -> dict[str, str] | None:
        """A model file's safetensors metadata as ComfyUI reads it (attach mode has no local folder)."""
        return await self.client.view_metadata(folder, name)

    def models_dir(self, folder: ModelFolder) -> Path | None:
        return self.comfyui_dir / "models" / folder if self.comfyui_dir is not None else None

    # -- running a job
    async def run(self, ctx: RunContext) -> RunResult:
        await self._wait_available(ctx)
        if ctx.prompt_id is not None:
            # Handed to ComfyUI before (daemon restart): follow or collect it, never post it again.
            with self.client.watch(ctx.prompt_id) as watch:
                follower = self._follower(ctx, watch)
                outputs = await follower.run(reconcile_first=True)
            return await self._collect(ctx, ctx.prompt_id, outputs)

        workflow = ctx.workflow
        if ctx.pose_image is not None:
            comfy_name = await place_pose(self.client, ctx.pose_image, self.comfyui_dir)
            workflow = set_pose(workflow, ctx.pose_image.name, comfy_name)
        workflow = await place_inputs(self.client, workflow, input_dir(self.settings.data_dir), self.comfyui_dir)
        if self.delete_outputs:
            workflow = per_job_prefix(workflow, ctx.job_id)
        workflow, refitted = fit_to_device(workflow, self._device)
        if refitted:
            log.info("job %s: ComfyUI runs on the CPU; ModelComputeDtype node(s) %s set to fp32",
                     ctx.job_id, ", ".join(refitted))
        if workflow is not ctx.workflow and ctx.on_workflow is not None:
            # The job records the graph ComfyUI runs: its saved workflow replays as it is.
            await ctx.on_workflow(workflow)
        prompt_id = str(uuid.uuid4())
        with self.client.watch(prompt_id) as watch:
            # Persisted before ComfyUI sees it: after a crash the id is reconciled, never posted twice.
            await ctx.on_prompt_id(prompt_id)
            if ctx.cancel_event.is_set():
                raise JobCancelled()
            try:
                answer = await self.client.post_prompt(workflow, prompt_id)
            except ComfyRefused as exc:
                raise PromptLost(f"ComfyUI stopped before it received prompt {prompt_id}.",
                                 {"prompt_id": prompt_id, "reason": "comfyui_stopped", "cause": exc.message}) from None
            except ComfyUnavailable:
                # The answer was lost, maybe not the prompt: look for it before deciding (never post twice).
                log.warning("job %s: no answer to POST /prompt %s; reconciling", ctx.job_id, prompt_id)
                outputs = await self._follower(ctx, watch).run(reconcile_first=True)
            else:
                answered = str(answer.get("prompt_id") or prompt_id)
                log.info("job %s: posted as ComfyUI prompt %s (number %s)", ctx.job_id, answered,
                         answer.get("number"))
                if answered != prompt_id:
                    # A ComfyUI (or a proxy, a fork) that picks its own id: the id it answers is the one
                    # its queue, history and messages use, so that is the one followed and persisted.
                    log.warning("job %s: ComfyUI queued prompt %s under id %s; following %s", ctx.job_id,
                                prompt_id, answered, answered)
                    watch.follow_instead(answered)
                    prompt_id = answered
                    await ctx.on_prompt_id(prompt_id)
                    outputs = await self._follower(ctx, watch).run(reconcile_first=True)
                else:
                    outputs = await self._follower(ctx, watch).run()
        return await self._collect(ctx, prompt_id, outputs)

    def _follower(self, ctx: RunContext, watch: PromptWatch) -> PromptFollower:
        graph = Graph(ctx.workflow)
        samplers = set(graph.ids_of_type(*SAMPLER_NODES))
        steps = next((graph[n].inputs.get("steps") for n in sorted(samplers)), 0)
        return PromptFollower(self.client, watch, on_progress=ctx.on_progress, cancel_event=ctx.cancel_event,
                              options=self.options, progress_nodes=samplers, on_queued=ctx.on_queued,
                              on_preview=ctx.on_preview, steps=steps if isinstance(steps, int) else 0)

    async def _collect(self, ctx: RunContext, prompt_id: str, outputs: dict[str, Any]) -> RunResult:
        image = await fetch_image(self.client, outputs, ctx.workflow, ctx.output_path)
        upscaled = (await fetch_upscaled(self.client, outputs, ctx.workflow, ctx.upscaled_path)
                    if ctx.upscaled_path is not None else None)
        if self.delete_outputs and self.comfyui_dir is not None:
            removed = await asyncio.to_thread(remove_outputs, self.comfyui_dir, outputs)
            if removed:
                log.info("job %s: removed ComfyUI's copy %s", ctx.job_id, ", ".join(p.name for p in removed))
        return RunResult(output_path=ctx.output_path, device=self._device,
                         upscaled_path=ctx.upscaled_path if upscaled is not None else None,
                         extra={"prompt_id": prompt_id, "comfyui_file": image,
                                **({"comfyui_upscaled_file": upscaled} if upscaled else {})})

    async def _wait_available(self, ctx: RunContext) -> None:
        """Jobs wait for ComfyUI (starting, restarting) and fail as comfyui_unavailable after the deadline.
        The WebSocket must be open before a prompt is posted: messages for a client without one are lost."""
        deadline = time.monotonic() + self.settings.comfyui_unavailable_deadline
        delay = 0.1
        while True:
            if self.client.connected and self._device is not None:
                return
            remaining = deadline - time.monotonic()
            self._raise_if_given_up()
            try:
                if self.supervisor is not None and not self.supervisor.ready.is_set():
                    await self.supervisor.wait_ready(max(0.0, remaining))
                    self._raise_if_given_up()
                stats = await self.client.system_stats(timeout=min(HEALTH_TIMEOUT, max(remaining, 0.1)))
                self._device = (stats.get("devices") or [{}])[0].get("type")
                if await self.client.wait_connected(max(0.0, min(remaining, 5.0))):
                    return
            except ComfyUnavailable as exc:
                reason = exc.message
            else:
                reason = "its WebSocket did not open"
            if ctx.cancel_event.is_set():
                raise JobCancelled()
            if time.monotonic() >= deadline:
                raise ComfyUnavailable(
                    f"ComfyUI at {self.client.base_url} was not available for "
                    f"{self.settings.comfyui_unavailable_deadline:g} s ({reason}).",
                    {"url": self.client.base_url, "mode": "managed" if self.managed else "attach"},
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)


def settings_wants_deletion_without_dir(settings: Settings) -> bool:
    return settings.comfyui_delete_outputs and settings.comfyui_dir is None


def stable_client_id(data_dir: Path) -> str:
    """The daemon's ComfyUI client id, kept in the data dir."""
    path = data_dir / CLIENT_ID_FILE
    try:
        value = path.read_text().strip()
        uuid.UUID(value)
        return value
    except (OSError, ValueError):
        pass
    value = str(uuid.uuid4())
    atomic.write_text(path, value + "\n")
    return value


def _list_model_files(directory: Path) -> list[str] | None:
    # ComfyUI lists sub-folders' files as "sub/name.safetensors".
    if not directory.is_dir():
        return None
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
