"""A fake ComfyUI: a real aiohttp server on a local port replaying the protocol recorded from ComfyUI
0.3.64 (`fixtures/comfyui/`, notes in `comfyui-protocol.md`). Not a mock of our code: the daemon talks
HTTP and WebSocket to it exactly as to the real server.

Replayed: WS message order and shapes (status+sid on connect, status x2, execution_start,
execution_cached, per node progress_state/executing, progress per step, executed, execution_success,
status, executing null), messages dropped for a client with no socket, status + bare `executing` on
reconnect, `/history` `{}` until finished, `/queue` 5-arrays, `/interrupt` at the next step (broadcast
`execution_interrupted`), `POST /queue` delete/clear, `/upload/image` (rename on clash, overwrite),
`/view`, `/system_stats`, `/object_info` (model enums = the install's files), `/models/{folder}`,
`/view_metadata/{folder}` (a safetensors file's metadata), the
400 bodies of the recorded validation cases and the 500 text body for a non-JSON POST. Outputs are real
PNGs (noise-free gradients, never black unless asked) written to `<base_dir>/output/`.

Knobs for tests: `step_delay`/`node_delay`, `pause_at(step)`/`resume()`, `drop_socket()`, `kill()` +
`restart()`, `fail_node(class_type, ...)`, `black_output`, `argv`, `device_type`, `hold_connections()`,
`crash_next_post`, `lose_next_answer`, `models_endpoint`, `ignore_prompt_ids`; records for assertions
(`prompt_posts`, `accepted`, `executions`, `interrupts`, `uploads`, `object_info_requests`, ...).
Run it standalone with `python tests/fake_comfyui.py --port N [--base-dir DIR] [--step-delay S]`; it
accepts (and reports in `/system_stats` argv) ComfyUI's own flags, so a `main.py` that runs it stands in
for a ComfyUI install in managed-mode tests (see `conftest_comfy.py`).

This module holds `FakeComfyUI` (lifecycle, knobs, the queue/history/system HTTP routes and the
WebSocket endpoint), `load_fixture`, `make_comfy_home` and `main()`. The rest lives beside it:
`fake_comfyui_worker.py` (the prompt execution loop and the WS messages it sends),
`fake_comfyui_files.py` (model/input listings, `/object_info`, `/view`, `/upload/image`) and
`fake_comfyui_graph.py` (graph validation, execution order, cache keys).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import heapq
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

# Both spellings: imported as `tests.fake_comfyui`, or run as a script (`python tests/fake_comfyui.py`, or a
# fake ComfyUI's main.py that puts tests/ on sys.path and runs this file): then its siblings are top-level.
try:
    from tests.fake_comfyui_files import InstallFiles
    from tests.fake_comfyui_worker import PromptWorker, ServerState
except ImportError:
    from fake_comfyui_files import InstallFiles  # type: ignore[no-redef]
    from fake_comfyui_worker import PromptWorker, ServerState  # type: ignore[no-redef]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"
DEFAULT_MODELS = {
    "checkpoints": ["anything-v5.safetensors"],
    "loras": ["spyke_plasma_v1.safetensors"],
    "controlnet": ["control_v11p_sd15_openpose.pth"],
}


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def families_object_info() -> dict[str, Any]:
    """The SDXL and Flux templates' other nodes, as the full recording has them."""
    return {k: v for k, v in load_fixture("object_info-families.json").items() if not k.startswith("_")}


def upscale_object_info() -> dict[str, Any]:
    data = json.loads((FIXTURES.parent / "upscale" / "object_info-upscale.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def make_comfy_home(root: Path, models: dict[str, list[str]] | None = None) -> Path:
    """A directory shaped like a ComfyUI install: models/<folder>/<files>, input/, output/."""
    for folder, names in (DEFAULT_MODELS if models is None else models).items():
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "models" / folder / name).write_bytes(b"not a real model")
    for sub in ("input", "output", "temp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


class FakeComfyUI(InstallFiles, PromptWorker):
    """The server: one instance is one ComfyUI "process" (`kill()` + `restart()` make a new one)."""

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
        # True: POST /prompt ignores the client's `prompt_id` and queues under a fresh uuid4 (what ComfyUI
        # does for a body without one; a server or proxy that drops the field behaves so).
        self.ignore_prompt_ids = False
        self.object_info_requests: list[str | None] = []  # GET /object_info[/{class}]: the class, None = all
        self.failures: dict[str, tuple[str, str]] = {}
        self.view_requests = 0  # GET /view calls; with `hold_views()`, each waits for `release_views()`
        self._view_gate: asyncio.Event | None = None
        # What happened, across restarts, for tests to assert on.
        self.prompt_posts = 0
        self.accepted: list[str] = []
        self.posted_with_socket: list[bool] = []  # was the poster's WebSocket open at POST time?
        self.executions: list[str] = []  # prompt ids whose execution started
        self.interrupts: list[str | None] = []
        self.frees: list[dict[str, Any]] = []  # bodies of POST /free, in order
        self.deleted: list[str] = []
        self.uploads: list[str] = []
        # As `--preview-method latent2rgb`: a JPEG preview per sampler step (None: the default, no previews).
        self.preview_method: str | None = None
        self.previews_sent: list[bytes] = []  # every preview image sent, in order
        self.feature_flags = True  # False: an older ComfyUI that ignores the handshake (legacy previews only)
        self.dropped: list[tuple[str, str]] = []  # (client_id, message type) sent to no socket
        self.accepted_at: dict[str, float] = {}  # prompt_id -> time.monotonic() when queued
        self.finished_at: dict[str, float] = {}  # prompt_id -> time.monotonic() of `executing null`
        # The recorded classes, plus the print upscale's two nodes (an excerpt of the same recorded ComfyUI).
        self._object_info = {**load_fixture("object_info.json"), **upscale_object_info(), **families_object_info()}
        self.upscale_scale = 4  # ImageUpscaleWithModel's factor: read off the model file its loader loads
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
        await self._listen()
        self._worker = asyncio.create_task(self._work(self._state), name="fake-comfyui-worker")

    async def _listen(self) -> None:
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

    async def stop(self) -> None:
        if self._runner is None and self._worker is None:
            return
        await self._shutdown()

    async def kill(self) -> None:
        """Die like SIGKILL: no close frames (clients see 1006), then connections are refused; the queue,
        the running prompt and the history are gone. (In-process limit: a connection asyncio is accepting
        at that very instant can linger unanswered; clients recover through their handshake timeout.)"""
        await self._shutdown()

    async def unplug(self) -> None:
        """A network cut (a cable, a VPN drop): nobody reaches the server, which goes on running its queue
        (held where `pause_at` holds it); `plug()` makes it reachable again with its queue and history."""
        await self._shutdown(keep_running=True)

    async def plug(self) -> None:
        await self._listen()

    async def restart(self) -> None:
        """Come back on the same port with an empty queue and history (files on disk remain)."""
        if self._runner is not None:
            await self._shutdown()
        self._state = ServerState()
        await self.start()

    async def _shutdown(self, keep_running: bool = False) -> None:
        state = self._state
        self._serving = None  # from now on the "process" is dead: late connections are reset
        if self._worker is not None and not keep_running:
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
            web.get(p + "/view_metadata/{folder}", self._view_metadata),
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
        prompt_id = str((None if self.ignore_prompt_ids else body.get("prompt_id")) or uuid.uuid4())
        self._accept(state, prompt, prompt_id, extra, validation.outputs, front=front, number=number)
        if self.lose_next_answer:
            self.lose_next_answer = False
            request.transport.abort()  # queued, but the poster never hears so (a dropped connection)
        return web.json_response({"prompt_id": prompt_id, "number": -number if front else number,
                                  "node_errors": {}})

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

    async def _system_stats(self, request: web.Request) -> web.Response:
        stats = copy.deepcopy(self._stats)
        stats["system"]["argv"] = list(self.argv)
        stats["devices"][0]["type"] = self.device_type
        stats["devices"][0]["name"] = self.device_type
        return web.json_response(stats)

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
        state.preview_metadata.discard(sid)  # a new connection has not said what it supports yet
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
                    if hello.get("type") == "feature_flags" and self.feature_flags:
                        if (hello.get("data") or {}).get("supports_preview_metadata"):
                            state.preview_metadata.add(sid)
                        await self._send_ws(ws, "feature_flags", self._misc["/features"]["json"])
                first = False
        finally:
            if state.sockets.get(sid) is ws:
                del state.sockets[sid]
                state.requests.pop(sid, None)
                state.preview_metadata.discard(sid)
        return ws


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
