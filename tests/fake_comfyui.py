"""A fake ComfyUI: a real aiohttp server on a local port replaying the protocol recorded from ComfyUI
0.3.64 (`fixtures/comfyui/`, notes in `comfyui-protocol.md`). Not a mock of our code: the daemon talks
HTTP and WebSocket to it exactly as to the real server.

Replayed: WS message order and shapes (status+sid on connect, status x2, execution_start,
execution_cached, per node progress_state/executing, progress per step, executed, execution_success,
status, executing null), messages dropped for a client with no socket, status + bare `executing` on
reconnect, `/history` `{}` until finished, `/queue` 5-arrays, `/interrupt` at the next step (broadcast
`execution_interrupted`), `POST /queue` delete/clear, `/upload/image` (rename on clash, overwrite),
`/view`, `/system_stats`, `/object_info` (model enums = the install's files), `/models/{folder}`, the
400 bodies of the recorded validation cases and the 500 text body for a non-JSON POST. Outputs are real
PNGs (noise-free gradients, never black unless asked) written to `<base_dir>/output/`.

Knobs for tests: `step_delay`/`node_delay`, `pause_at(step)`/`resume()`, `drop_socket()`, `kill()` +
`restart()`, `fail_node(class_type, ...)`, `black_output`, `argv`, `device_type`, `hold_connections()`,
`crash_next_post`, `lose_next_answer`, `models_endpoint`.
Run it standalone with `python tests/fake_comfyui.py --port N [--base-dir DIR] [--step-delay S]`; it
accepts (and reports in `/system_stats` argv) ComfyUI's own flags, so a `main.py` that runs it stands in
for a ComfyUI install in managed-mode tests (see `conftest_comfy.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import heapq
import io
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web
from PIL import Image, PngImagePlugin

try:
    from tests.fake_comfyui_graph import GraphValidator, execution_order, image_size, is_link, signatures
except ImportError:  # run as a script: `python tests/fake_comfyui.py`, or as a fake ComfyUI's main.py
    from fake_comfyui_graph import GraphValidator, execution_order, image_size, is_link, signatures  # type: ignore

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"
MODEL_SUFFIXES = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SAMPLERS = ("KSampler", "KSamplerAdvanced")
SAVERS = {"SaveImage": "output", "PreviewImage": "temp"}
DEFAULT_MODELS = {
    "checkpoints": ["anything-v5.safetensors"],
    "loras": ["spyke_plasma_v1.safetensors"],
    "controlnet": ["control_v11p_sd15_openpose.pth"],
}
# Loader inputs whose enum is a model folder listing (recomputed per request, as ComfyUI does).
MODEL_ENUMS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("UNETLoader", "unet_name"): "diffusion_models",
}


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def make_comfy_home(root: Path, models: dict[str, list[str]] | None = None) -> Path:
    """A directory shaped like a ComfyUI install: models/<folder>/<files>, input/, output/."""
    for folder, names in (DEFAULT_MODELS if models is None else models).items():
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "models" / folder / name).write_bytes(b"not a real model")
    for sub in ("input", "output", "temp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


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


class FakeComfyUI:
    def __init__(self, base_dir: Path, *, host: str = "127.0.0.1", port: int = 0, step_delay: float = 0.0,
                 node_delay: float = 0.0, argv: list[str] | None = None, device_type: str = "cpu"):
        self.base_dir = Path(base_dir)
        make_comfy_home(self.base_dir, {})
        self.host = host
        self.port = port
        self.step_delay = step_delay
        self.node_delay = node_delay
        self.argv = argv or ["main.py", "--force-fp16", "--fp32-vae", "--listen", host, "--port", str(port)]
        self.device_type = device_type
        self.black_output = False
        self.crash_next_post = False  # the next POST /prompt hits an internal error (aiohttp's 500 text)
        self.lose_next_answer = False  # the next accepted POST /prompt loses its connection before answering
        self.models_endpoint = True  # False: GET /models/{folder} is a 404, as on older ComfyUI versions
        self.failures: dict[str, tuple[str, str]] = {}
        # What happened, across restarts, for tests to assert on.
        self.prompt_posts = 0
        self.accepted: list[str] = []
        self.posted_with_socket: list[bool] = []  # was the poster's WebSocket open at POST time?
        self.executions: list[str] = []  # prompt ids whose execution started
        self.interrupts: list[str | None] = []
        self.frees: list[dict[str, Any]] = []  # bodies of POST /free, in order
        self.deleted: list[str] = []
        self.uploads: list[str] = []
        self.dropped: list[tuple[str, str]] = []  # (client_id, message type) sent to no socket
        self.accepted_at: dict[str, float] = {}  # prompt_id -> time.monotonic() when queued
        self.finished_at: dict[str, float] = {}  # prompt_id -> time.monotonic() of `executing null`
        self._object_info = load_fixture("object_info.json")
        self._stats = load_fixture("system_stats.json")
        self._misc = load_fixture("misc-get-endpoints.json")
        self._state = ServerState()
        self._runner: web.AppRunner | None = None
        self._serving: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._worker: asyncio.Task[None] | None = None
        self._break_step: int | None = None
        self._paused = asyncio.Event()
        self._go = asyncio.Event()
        self._connect_gate = asyncio.Event()
        self._connect_gate.set()

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        for prefix in ("", "/api"):
            app.router.add_routes(self._routes(prefix))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        runner, server = self._runner, self._runner.server
        register = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            # A connection the loop accepted just before this "process" died registers itself a moment
            # later; a killed process would have reset it.
            if self._serving is not runner:
                transport.abort()
                return
            register(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        self._serving = runner
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
            if "--port" in self.argv:
                self.argv[self.argv.index("--port") + 1] = str(self.port)
        self._worker = asyncio.create_task(self._work(self._state), name="fake-comfyui-worker")

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self._shutdown()

    async def kill(self) -> None:
        """Die like SIGKILL: no close frames (clients see 1006), then connections are refused; the queue,
        the running prompt and the history are gone. (In-process limit: a connection asyncio is accepting
        at that very instant can linger unanswered; clients recover through their handshake timeout.)"""
        await self._shutdown()

    async def restart(self) -> None:
        """Come back on the same port with an empty queue and history (files on disk remain)."""
        if self._runner is not None:
            await self._shutdown()
        self._state = ServerState()
        await self.start()

    async def _shutdown(self) -> None:
        state = self._state
        self._serving = None  # from now on the "process" is dead: late connections are reset
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
        if self._site is not None:
            await self._site.stop()  # stop listening first: reconnects are refused from now on
        # Every open connection dies with the process: sockets, half-done handshakes, keep-alive HTTP.
        server = self._runner.server if self._runner is not None else None
        for protocol in list(server.connections if server is not None else []):
            if protocol.transport is not None:
                protocol.transport.abort()
        for request in list(state.requests.values()):
            if request.transport is not None:
                request.transport.abort()
        state.sockets.clear()
        state.requests.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    # -- knobs
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

    def hold_connections(self) -> None:
        """Hold new WebSocket handshakes (a slow server) until `release_connections()`."""
        self._connect_gate.clear()

    def release_connections(self) -> None:
        self._connect_gate.set()

    async def drop_socket(self, client_id: str | None = None, *, abrupt: bool = False) -> None:
        """Close clients' sockets from the server side mid-run; what ComfyUI sends meanwhile is lost."""
        state = self._state
        for sid in [s for s in state.sockets if client_id in (None, s)]:
            ws = state.sockets.pop(sid)
            request = state.requests.pop(sid, None)
            if abrupt and request is not None and request.transport is not None:
                request.transport.abort()
            else:
                await ws.close(code=WSCloseCode.GOING_AWAY)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("fake ComfyUI: condition not reached")
            await asyncio.sleep(0.01)

    @property
    def pending_ids(self) -> list[str]:
        return [item.prompt_id for item in sorted(self._state.pending)]

    @property
    def running_id(self) -> str | None:
        return self._state.running.prompt_id if self._state.running else None

    @property
    def history(self) -> dict[str, Any]:
        return self._state.history

    @property
    def connected_clients(self) -> list[str]:
        return list(self._state.sockets)

    def enqueue(self, prompt: dict[str, Any], client_id: str = "someone-else") -> str:
        """Queue a prompt as another client (the ComfyUI web UI, say) would; returns its id."""
        validation = self._validator(prompt).run()
        assert validation.ok, validation
        return self._accept(self._state, prompt, str(uuid.uuid4()), {"client_id": client_id}, validation.outputs,
                            front=False)

    # -- model files, input files
    def _models(self, folder: str) -> list[str]:
        root = self.base_dir / "models" / folder
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)

    def _input_images(self) -> list[str]:
        root = self.base_dir / "input"
        return sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def _resolve_input(self, name: str) -> Path:
        kind = "input"
        match = re.fullmatch(r"(.*) \[(input|output|temp)\]", name)
        if match:
            name, kind = match.group(1), match.group(2)
        return self.base_dir / kind / name

    def _image_exists(self, name: str) -> bool:
        return ".." not in name and self._resolve_input(name).is_file()

    def _file_stamp(self, name: str) -> str:
        path = self._resolve_input(name)
        try:
            st = path.stat()
        except OSError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"

    def object_info(self) -> dict[str, Any]:
        info = copy.deepcopy(self._object_info)
        for (node, name), folder in MODEL_ENUMS.items():
            if node in info:
                info[node]["input"]["required"][name][0] = self._models(folder)
        images = self._input_images()
        for node in ("LoadImage", "LoadImageMask"):
            if node in info:
                info[node]["input"]["required"]["image"][0] = images
        return info

    def _validator(self, prompt: Any) -> GraphValidator:
        return GraphValidator(prompt, self.object_info(), self._image_exists)

    # -- HTTP
    def _routes(self, prefix: str) -> list[web.RouteDef]:
        p = prefix
        return [
            web.get(p + "/ws", self._ws),
            web.post(p + "/prompt", self._post_prompt),
            web.get(p + "/prompt", self._get_prompt),
            web.get(p + "/queue", self._get_queue),
            web.post(p + "/queue", self._post_queue),
            web.post(p + "/interrupt", self._interrupt),
            web.post(p + "/free", self._free),
            web.get(p + "/history", self._get_history),
            web.get(p + "/history/{prompt_id}", self._get_history_one),
            web.post(p + "/history", self._post_history),
            web.get(p + "/view", self._view),
            web.post(p + "/upload/image", self._upload),
            web.get(p + "/system_stats", self._system_stats),
            web.get(p + "/object_info", self._get_object_info),
            web.get(p + "/object_info/{node_class}", self._get_object_info_one),
            web.get(p + "/models", self._get_models),
            web.get(p + "/models/{folder}", self._get_models_folder),
            web.get(p + "/features", self._features),
            web.get(p + "/embeddings", self._embeddings),
        ]

    async def _post_prompt(self, request: web.Request) -> web.Response:
        self.prompt_posts += 1
        if self.crash_next_post:
            self.crash_next_post = False
            raise RuntimeError("fake internal error")  # aiohttp answers 500 "Server got itself in trouble"
        body = await request.json()  # not JSON: the exception gives the recorded 500 text body
        state = self._state
        front = bool(body.get("front"))
        number = body.get("number")
        if number is None:
            number = state.number
            state.number += 1  # counts rejected prompts too, as recorded
        if "prompt" not in body:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                 "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}}, status=400)
        prompt = body["prompt"]
        validation = self._validator(prompt).run()
        if not validation.ok:
            return web.json_response({"error": validation.error, "node_errors": validation.node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        self.posted_with_socket.append(extra.get("client_id") in state.sockets)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        self._accept(state, prompt, prompt_id, extra, validation.outputs, front=front, number=number)
        if self.lose_next_answer:
            self.lose_next_answer = False
            request.transport.abort()  # queued, but the poster never hears so (a dropped connection)
        return web.json_response({"prompt_id": prompt_id, "number": -number if front else number,
                                  "node_errors": {}})

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

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._state.queue_remaining}})

    async def _get_queue(self, request: web.Request) -> web.Response:
        state = self._state
        return web.json_response({
            "queue_running": [state.running.as_list()] if state.running else [],
            "queue_pending": [item.as_list() for item in state.pending],
        })

    async def _post_queue(self, request: web.Request) -> web.Response:
        state = self._state
        body = await request.json()
        if body.get("clear"):
            state.pending.clear()
        for prompt_id in body.get("delete") or []:
            kept = [item for item in state.pending if item.prompt_id != prompt_id]
            if len(kept) != len(state.pending):
                self.deleted.append(prompt_id)
            state.pending[:] = kept
            heapq.heapify(state.pending)
        self._broadcast_soon(state, "status", self._status(state))
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.Response:
        state = self._state
        body = await request.json() if request.can_read_body else {}
        prompt_id = (body or {}).get("prompt_id")
        self.interrupts.append(prompt_id)
        if prompt_id is None or (state.running is not None and state.running.prompt_id == prompt_id):
            state.interrupt = True  # noticed at the next sampler step or node start
        return web.Response(status=200)

    async def _free(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.frees.append(body or {})
        if (body or {}).get("free_memory"):
            self._state.cache.clear()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        items = list(self._state.history.items())
        offset = int(request.query.get("offset", 0) or 0)
        if "max_items" in request.query:
            max_items = int(request.query["max_items"])
            items = items[max(0, len(items) - max_items - offset):len(items) - offset]
        return web.json_response(dict(items))

    async def _get_history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self._state.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._state.history.clear()
        for prompt_id in body.get("delete") or []:
            self._state.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        kind = None
        match = re.fullmatch(r"(.*) \[(input|output|temp)\]", filename)
        if match:
            filename, kind = match.group(1), match.group(2)
        if not filename or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        kind = kind or query.get("type", "output")
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        root = (self.base_dir / kind).resolve()
        folder = (root / query.get("subfolder", "")).resolve()
        if folder != root and root not in folder.parents:
            return web.Response(status=403)
        path = folder / filename
        if not path.is_file():
            return web.Response(status=404)
        headers = {"Content-Disposition": f'filename="{path.name}"'}
        preview = query.get("preview")
        channel = query.get("channel")
        if preview or channel in ("rgb", "a"):
            data, content_type = await asyncio.to_thread(_reencode, path, preview, channel)
            return web.Response(body=data, content_type=content_type, headers=headers)
        return web.FileResponse(path, headers=headers)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        kind = str(form.get("type") or "input")
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        subfolder = str(form.get("subfolder") or "")
        root = (self.base_dir / kind).resolve()
        folder = (root / subfolder).resolve()
        if folder != root and root not in folder.parents:
            return web.Response(status=400)
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        data = image.file.read()
        name = Path(image.filename).name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        duplicate = False
        if not overwrite:
            stem, suffix = os.path.splitext(name)
            i = 1
            while path.exists():
                if path.read_bytes() == data:
                    duplicate = True  # same name and bytes: nothing written, same name returned
                    break
                name = f"{stem} ({i}){suffix}"
                path = folder / name
                i += 1
        if not duplicate:
            path.write_bytes(data)
        self.uploads.append(name)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _system_stats(self, request: web.Request) -> web.Response:
        stats = copy.deepcopy(self._stats)
        stats["system"]["argv"] = list(self.argv)
        stats["devices"][0]["type"] = self.device_type
        stats["devices"][0]["name"] = self.device_type
        return web.json_response(stats)

    async def _get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info())

    async def _get_object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def _get_models(self, request: web.Request) -> web.Response:
        return web.json_response(self._misc["/models"]["json"])

    async def _get_models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if not self.models_endpoint:
            raise web.HTTPNotFound()  # as a ComfyUI older than the /models routes answers
        if folder not in self._misc["/models"]["json"]:
            return web.Response(status=404)
        return web.json_response(self._models(folder))

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(self._misc["/features"]["json"])

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    # -- WebSocket
    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        await self._connect_gate.wait()
        state = self._state
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        # A second connection with the same clientId replaces the first in the server's table.
        state.sockets[sid] = ws
        state.requests[sid] = request
        await self._send_ws(ws, "status", {**self._status(state), "sid": sid})
        running = state.running
        if running is not None and running.client_id == sid and state.last_node_id is not None:
            # Recorded on reconnect and late connect: the running node, without prompt_id.
            await self._send_ws(ws, "executing", {"node": state.last_node_id})
        first = True
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    try:
                        hello = json.loads(msg.data)
                    except ValueError:
                        hello = {}
                    if hello.get("type") == "feature_flags":
                        await self._send_ws(ws, "feature_flags", self._misc["/features"]["json"])
                first = False
        finally:
            if state.sockets.get(sid) is ws:
                del state.sockets[sid]
                state.requests.pop(sid, None)
        return ws

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

    async def _send(self, state: ServerState, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        ws = state.sockets.get(client_id) if client_id is not None else None
        if ws is None or not await self._send_ws(ws, kind, data):
            self.dropped.append((str(client_id), kind))  # no socket for that client: lost, no replay

    async def _broadcast(self, state: ServerState, kind: str, data: dict[str, Any]) -> None:
        for ws in list(state.sockets.values()):
            await self._send_ws(ws, kind, data)

    def _broadcast_soon(self, state: ServerState, kind: str, data: dict[str, Any]) -> None:
        asyncio.get_running_loop().create_task(self._broadcast(state, kind, data))

    # -- execution
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
        keys = signatures(prompt, self._file_stamp)
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
                        await emit("progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id})
                        await self._maybe_pause(step)
                    await progress_state(node_id, steps, steps, "finished")
                else:
                    await self._delay(self.node_delay)
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
        width, height, batch = image_size(prompt, node_id, self.base_dir / "input")
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


def _reencode(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    with Image.open(path) as img:
        img.load()
        if channel == "rgb":
            img = img.convert("RGB")
        elif channel == "a":
            img = img.convert("RGBA").getchannel("A")
        buf = io.BytesIO()
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = "jpeg" if fmt == "jpeg" else "webp"
            img.convert("RGB").save(buf, fmt.upper(), quality=int(quality or 90))
            return buf.getvalue(), f"image/{fmt}"
        img.save(buf, "PNG")
        return buf.getvalue(), "image/png"


async def _serve(fake: FakeComfyUI) -> None:
    await fake.start()
    print("Starting server\n", flush=True)
    print(f"To see the GUI go to: {fake.url}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake ComfyUI server replaying the recorded protocol.")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
    parser.add_argument("--base-dir", type=Path, default=Path.cwd(),
                        help="the install dir: models/<folder>/, input/, output/ (default: the current dir)")
    parser.add_argument("--step-delay", type=float, default=float(os.environ.get("FAKE_COMFYUI_STEP_DELAY", 0)))
    parser.add_argument("--device", default="cpu", help="devices[0].type in /system_stats (cpu, cuda, mps)")
    args, _comfy_flags = parser.parse_known_args(argv)  # --force-fp16, --fp32-vae, ... are only reported
    full_argv = ["main.py", *(argv if argv is not None else sys.argv[1:])]
    fake = FakeComfyUI(args.base_dir, host=args.listen, port=args.port, step_delay=args.step_delay,
                       argv=full_argv, device_type=args.device)
    try:
        asyncio.run(_serve(fake))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
