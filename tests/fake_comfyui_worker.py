"""The fake ComfyUI's execution side: the queue, the prompt loop and the WebSocket sends it makes.

`PromptWorker` is mixed into `FakeComfyUI` (`fake_comfyui.py`), whose `__init__` sets the knobs this reads
live (`step_delay`, `node_delay`, `failures`, `black_output`) and the records it appends to (`accepted`,
`executions`, `dropped`, `finished_at`); the execution knobs `fail_node()` and `pause_at()`/`resume()`
live here. Replayed: the recorded per-prompt message sequence (execution_start, execution_cached,
progress_state/executing per node, progress per step, executed, execution_success | execution_error |
execution_interrupted, status, executing null), the history entry written before the queue entry goes
away, the node cache, and the output PNGs (noise-free gradients, never black unless asked) under
`<base_dir>/output/` or `temp/`.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import io
import json
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image, PngImagePlugin

# Both spellings: imported as `tests.fake_comfyui_worker`, or beside `fake_comfyui.py` run as a script
# (`python tests/fake_comfyui.py`, or a fake ComfyUI's main.py that puts tests/ on sys.path).
try:
    from tests.fake_comfyui_files import file_stamp
    from tests.fake_comfyui_graph import execution_order, image_size, is_link, signatures
except ImportError:
    from fake_comfyui_files import file_stamp  # type: ignore[no-redef]
    from fake_comfyui_graph import execution_order, image_size, is_link, signatures  # type: ignore[no-redef]

SAMPLERS = ("KSampler", "KSamplerAdvanced")
PREVIEW_SIZE = 512  # ComfyUI's --preview-size default
SAVERS = {"SaveImage": "output", "PreviewImage": "temp"}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(order=True)
class QueueItem:
    number: float
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


@dataclass
class ServerState:
    """Everything a ComfyUI process holds in memory; a restart starts from a fresh one."""

    pending: list[QueueItem] = field(default_factory=list)  # a heap, served as-is like ComfyUI's
    running: QueueItem | None = None
    history: dict[str, Any] = field(default_factory=dict)
    number: int = 0
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    requests: dict[str, web.Request] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # node signature -> UI output (or None)
    interrupt: bool = False
    last_node_id: str | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Sockets whose first frame was the feature_flags handshake: they get previews as type 4 (metadata).
    preview_metadata: set[str] = field(default_factory=set)

    @property
    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)


class _Interrupted(Exception):
    def __init__(self, node_id: str):
        self.node_id = node_id


class _NodeFailed(Exception):
    def __init__(self, node_id: str, exception_type: str, message: str):
        self.node_id = node_id
        self.exception_type = exception_type
        self.message = message


class PromptWorker:
    """The queue, the execution loop and its WebSocket sends, as methods of the fake server (a mixin)."""

    # Set by `FakeComfyUI.__init__`; tests change the knobs between (and during) runs.
    base_dir: Path
    step_delay: float
    preview_method: str | None
    previews_sent: list[bytes]
    node_delay: float
    black_output: bool
    failures: dict[str, tuple[str, str]]
    executions: list[str]
    dropped: list[tuple[str, str]]
    accepted: list[str]
    accepted_at: dict[str, float]
    finished_at: dict[str, float]
    _object_info: dict[str, Any]
    upscale_scale: int
    _break_step: int | None
    _paused: asyncio.Event
    _go: asyncio.Event

    # -- knobs of the execution
    def fail_node(self, class_type: str, exception_type: str = "RuntimeError",
                  message: str = "fake failure") -> None:
        """Every node of this class raises at run time (the recorded execution_error sequence)."""
        self.failures[class_type] = (exception_type, message)

    def clear_failures(self) -> None:
        self.failures.clear()

    def pause_at(self, step: int) -> None:
        """Block the sampler after it reports `step` (0: before the first step) until `resume()`."""
        self._break_step = step
        self._paused.clear()
        self._go.clear()

    def resume(self) -> None:
        self._break_step = None
        self._go.set()

    async def wait_paused(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._paused.wait(), timeout)

    # -- WebSocket sends
    @staticmethod
    def _status(state: ServerState) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": state.queue_remaining}}}

    @staticmethod
    async def _send_ws(ws: web.WebSocketResponse, kind: str, data: dict[str, Any]) -> bool:
        if ws.closed:
            return False
        try:
            await ws.send_str(json.dumps({"type": kind, "data": data}))
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _preview_jpeg(self, prompt: dict[str, Any], sampler: str, step: int) -> bytes:
        """What `--preview-method latent2rgb` sends: a JPEG of the latent's colours fitted to the preview
        size (512 on the longer side: 341x512 for a 64x96 image, as recorded), different at each step."""
        width, height, _ = image_size(prompt, sampler_output(prompt, sampler), self.base_dir / "input")
        scale = PREVIEW_SIZE / max(width, height)
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w + step * 40) % 256, (yy * 255 // h) % 256,
                        np.full_like(xx, (60 * step) % 256)], -1).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(img).save(out, format="JPEG", quality=85)
        data = out.getvalue()
        self.previews_sent.append(data)
        return data

    async def _send_preview(self, state: ServerState, client_id: str | None, image: bytes, prompt_id: str,
                            node_id: str) -> None:
        """Binary event type 1 (legacy: image format 1 = JPEG) or 4 (metadata JSON, then the image)."""
        ws = state.sockets.get(client_id) if client_id is not None else None
        if ws is None or ws.closed:
            return
        if client_id in state.preview_metadata:
            meta = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                               "parent_node_id": None, "real_node_id": node_id, "image_type": "image/jpeg"})
            frame = struct.pack(">II", 4, len(meta.encode())) + meta.encode() + image
        else:
            frame = struct.pack(">II", 1, 1) + image
        try:
            await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            pass

    async def _send(self, state: ServerState, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        ws = state.sockets.get(client_id) if client_id is not None else None
        if ws is None or not await self._send_ws(ws, kind, data):
            self.dropped.append((str(client_id), kind))  # no socket for that client: lost, no replay

    async def _broadcast(self, state: ServerState, kind: str, data: dict[str, Any]) -> None:
        for ws in list(state.sockets.values()):
            await self._send_ws(ws, kind, data)

    def _broadcast_soon(self, state: ServerState, kind: str, data: dict[str, Any]) -> None:
        asyncio.get_running_loop().create_task(self._broadcast(state, kind, data))

    # -- queue and execution
    def _accept(self, state: ServerState, prompt: dict[str, Any], prompt_id: str, extra: dict[str, Any],
                outputs: list[str], *, front: bool, number: float | None = None) -> str:
        if number is None:
            number = state.number
            state.number += 1
        heapq.heappush(state.pending, QueueItem(-number if front else number, prompt_id, prompt, extra, outputs))
        self.accepted.append(prompt_id)
        self.accepted_at[prompt_id] = time.monotonic()
        self._broadcast_soon(state, "status", self._status(state))
        state.wakeup.set()
        return prompt_id

    async def _work(self, state: ServerState) -> None:
        while True:
            while not state.pending:
                state.wakeup.clear()
                await state.wakeup.wait()
            item = heapq.heappop(state.pending)
            state.running = item
            await self._broadcast(state, "status", self._status(state))
            try:
                await self._execute(state, item)
            finally:
                state.running = None
                state.last_node_id = None

    async def _execute(self, state: ServerState, item: QueueItem) -> None:
        pid, prompt, cid = item.prompt_id, item.prompt, item.client_id
        self.executions.append(pid)
        state.interrupt = False
        messages: list[list[Any]] = []

        async def emit(kind: str, data: dict[str, Any], *, history: bool = False, broadcast: bool = False) -> None:
            if history:
                messages.append([kind, data])
            if broadcast:
                await self._broadcast(state, kind, data)
            else:
                await self._send(state, cid, kind, data)

        await emit("execution_start", {"prompt_id": pid, "timestamp": now_ms()}, history=True)
        keys = signatures(prompt, lambda name: file_stamp(self.base_dir, name))
        needed = set(item.outputs)
        for out in item.outputs:
            needed.update(_upstream_ids(prompt, out))
        cached = {n for n in prompt if n in needed and keys[n] in state.cache}
        await emit("execution_cached", {"nodes": [n for n in prompt if n in cached], "prompt_id": pid,
                                        "timestamp": now_ms()}, history=True)
        progress: dict[str, dict[str, Any]] = {}
        ui: dict[str, Any] = {}
        done: list[str] = []
        new_cache = {keys[n]: state.cache[keys[n]] for n in cached}

        async def progress_state(node_id: str, value: float, maximum: float, st: str) -> None:
            progress[node_id] = {"value": value, "max": maximum, "state": st, "node_id": node_id,
                                 "prompt_id": pid, "display_node_id": node_id, "parent_node_id": None,
                                 "real_node_id": node_id}
            await emit("progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(progress)})

        for out in item.outputs:  # a cached output node replays its UI output without running
            if out in cached and state.cache[keys[out]]:
                ui[out] = state.cache[keys[out]]
                await emit("executed", {"node": out, "display_node": out, "output": ui[out], "prompt_id": pid})
                await progress_state(out, 1, 1, "finished")
        try:
            for node_id in execution_order(prompt, item.outputs, cached, self._object_info):
                node = prompt[node_id]
                kind = node["class_type"]
                if state.interrupt:
                    raise _Interrupted(node_id)
                await progress_state(node_id, 0.0, 1.0, "running")
                await emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                state.last_node_id = node_id
                if kind in self.failures:
                    await self._delay(self.node_delay)
                    raise _NodeFailed(node_id, *self.failures[kind])
                if kind in SAMPLERS:
                    steps = int(node["inputs"].get("steps", 1))
                    await self._maybe_pause(0)
                    for step in range(1, steps + 1):
                        await self._delay(self.step_delay)
                        if state.interrupt:  # checked after the step's work, before reporting it
                            raise _Interrupted(node_id)
                        await progress_state(node_id, step, steps, "running")
                        # Recorded order: a metadata client gets the preview, then `progress`; a legacy
                        # client `progress`, then the preview.
                        preview = self._preview_jpeg(prompt, node_id, step) if self.preview_method else None
                        metadata = cid in state.preview_metadata
                        if preview is not None and metadata:
                            await self._send_preview(state, cid, preview, pid, node_id)
                        await emit("progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id})
                        if preview is not None and not metadata:
                            await self._send_preview(state, cid, preview, pid, node_id)
                        await self._maybe_pause(step)
                    await progress_state(node_id, steps, steps, "finished")
                else:
                    await self._delay(self.node_delay)
                    if kind == "UpscaleModelLoader":
                        self.upscale_scale = await self._load_upscaler(node_id, str(node["inputs"]["model_name"]))
                    if kind in SAVERS:
                        ui[node_id] = {"images": await self._save_images(prompt, node_id)}
                        await emit("executed", {"node": node_id, "display_node": node_id, "output": ui[node_id],
                                                "prompt_id": pid})
                    await progress_state(node_id, 1.0, 1.0, "finished")
                done.append(node_id)
                new_cache[keys[node_id]] = ui.get(node_id)
        except _Interrupted as exc:
            await emit("execution_interrupted", {"prompt_id": pid, "node_id": exc.node_id,
                                                 "node_type": prompt[exc.node_id]["class_type"], "executed": done,
                                                 "timestamp": now_ms()}, history=True, broadcast=True)
            status = "error"
        except _NodeFailed as exc:
            node = prompt[exc.node_id]
            await emit("execution_error", {
                "prompt_id": pid, "node_id": exc.node_id, "node_type": node["class_type"], "executed": done,
                "exception_message": exc.message, "exception_type": exc.exception_type,
                "traceback": [f'  File "fake_comfyui.py", line 1, in {node["class_type"]}\n'
                              f'    raise {exc.exception_type}({exc.message!r})\n'],
                "current_inputs": {k: [v] for k, v in node.get("inputs", {}).items() if not is_link(v)},
                "current_outputs": list(prompt), "timestamp": now_ms(),
            }, history=True)
            status = "error"
        else:
            await emit("execution_success", {"prompt_id": pid, "timestamp": now_ms()}, history=True)
            status = "success"
        state.cache = new_cache
        # History is written before the queue entry goes away (ComfyUI's task_done does both).
        state.history[pid] = {
            "prompt": item.as_list(),
            "outputs": ui,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui},
        }
        state.running = None
        await self._broadcast(state, "status", self._status(state))
        await self._send(state, cid, "executing", {"node": None, "prompt_id": pid})
        self.finished_at[pid] = time.monotonic()

    async def _load_upscaler(self, node_id: str, name: str) -> int:
        """Load the file as the real loader does (spandrel's rules, `upscale_fixtures.comfyui_loads`): a
        file it refuses fails the node with torch's message, as it fails there."""
        try:
            from tests.upscale_fixtures import comfyui_loads
        except ImportError:
            from upscale_fixtures import comfyui_loads  # type: ignore[no-redef]
        try:
            return await asyncio.to_thread(comfyui_loads, self.base_dir / "models" / "upscale_models" / name)
        except Exception as exc:  # noqa: BLE001 (whatever the real loader raises becomes the node's error)
            raise _NodeFailed(node_id, type(exc).__name__, str(exc)) from None

    async def _delay(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # also yields: HTTP and WS stay responsive mid-run, as recorded

    async def _maybe_pause(self, step: int) -> None:
        if self._break_step is not None and self._break_step == step:
            self._paused.set()
            await self._go.wait()
            self._paused.clear()

    async def _save_images(self, prompt: dict[str, Any], node_id: str) -> list[dict[str, str]]:
        node = prompt[node_id]
        kind = SAVERS[node["class_type"]]
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI")) if kind == "output" else "ComfyUI_temp"
        subfolder, _, base = prefix.rpartition("/")
        width, height, batch = image_size(prompt, node_id, self.base_dir / "input", self.upscale_scale)
        seed = next((int(n["inputs"].get("seed", n["inputs"].get("noise_seed", 0)))
                     for n in prompt.values() if n["class_type"] in SAMPLERS), 0)
        folder = self.base_dir / kind / subfolder
        return await asyncio.to_thread(_write_pngs, folder, subfolder, base, kind, width, height, batch, seed,
                                       self.black_output, json.dumps(prompt))


def _upstream_ids(prompt: dict[str, Any], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for value in prompt[stack.pop()].get("inputs", {}).values():
            if is_link(value) and value[0] in prompt and value[0] not in seen:
                seen.add(value[0])
                stack.append(value[0])
    return seen


def _write_pngs(folder: Path, subfolder: str, base: str, kind: str, width: int, height: int, batch: int,
                seed: int, black: bool, prompt_json: str) -> list[dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    # The counter continues from the highest existing file for that prefix, as ComfyUI's does.
    pattern = re.compile(re.escape(base) + r"_(\d{5})_\.png")
    counter = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))), default=0) + 1
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", prompt_json)
    images = []
    for i in range(batch):
        if black:
            arr = np.zeros((height, width, 3), dtype=np.uint8)
        else:
            rng = np.random.default_rng(seed + i)
            colour = rng.integers(60, 256, size=3)
            ramp = np.linspace(0.4, 1.0, width, dtype=np.float32)[None, :, None]
            fall = np.linspace(1.0, 0.6, height, dtype=np.float32)[:, None, None]
            arr = (colour[None, None, :] * ramp * fall).astype(np.uint8)
        name = f"{base}_{counter + i:05d}_.png"
        Image.fromarray(arr, "RGB").save(folder / name, pnginfo=info, compress_level=1)
        images.append({"filename": name, "subfolder": subfolder, "type": kind})
    return images


def sampler_output(prompt: dict[str, Any], sampler: str) -> str:
    """A SaveImage (or any node) downstream of the sampler, whose image size a preview takes."""
    for node_id, node in prompt.items():
        if node.get("class_type") in SAVERS:
            return node_id
    return sampler
