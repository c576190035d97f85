"""The transport to one ComfyUI server: its HTTP endpoints and one long-lived WebSocket (aiohttp).

The socket is opened with the daemon's `client_id` at start, kept open, reconnected with backoff,
and its messages are routed to watchers by `prompt_id`. Following a prompt to its end is
`sidecar.comfyui.follow`; getting its image out is `sidecar.comfyui.images`.

Why one module of over 400 lines: `ComfyClient` is one transport; its HTTP calls and its socket share
one session, one client id and one reconnect state, which a split would have to pass between modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from sidecar.answer_limits import MAX_FILE_ANSWER, MAX_JSON_ANSWER, AnswerTooLarge, read_bounded
from sidecar.comfyui.previews import FEATURE_FLAGS, decode_frame
from sidecar.errors import ComfyUnavailable, JobFailed

log = logging.getLogger("sidecar.comfyui")

DEFAULT_REQUEST_TIMEOUT = 30.0
VIEW_TIMEOUT = 300.0  # a 512x768 PNG is small, but a busy server may answer slowly
HANDSHAKE_TIMEOUT = 30.0  # a server that accepts connections but never upgrades them is tried again


class ComfyRefused(ComfyUnavailable):
    """Nothing listens on ComfyUI's port: the process is not running, and every prompt it held is gone
    (ComfyUI keeps its queue and history in memory only)."""


@dataclass(frozen=True)
class WsEvent:
    """What a watcher receives: a WebSocket message for its prompt, or a change of the connection."""

    kind: Literal["message", "connected", "disconnected", "preview"]
    type: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    close_code: int | None = None


@dataclass(frozen=True)
class QueueState:
    running: list[str]
    pending: list[str]  # in run order (ComfyUI returns its heap array; we sort by number)

    def where(self, prompt_id: str) -> Literal["running", "pending"] | None:
        if prompt_id in self.running:
            return "running"
        if prompt_id in self.pending:
            return "pending"
        return None

    def ahead_of(self, prompt_id: str) -> int | None:
        """Prompts that run before a pending one (the running one included); None when not pending."""
        if prompt_id not in self.pending:
            return None
        return len(self.running) + self.pending.index(prompt_id)


class PromptWatch:
    """The events of one prompt. Register it (`with client.watch(id)`) before posting the prompt:
    ComfyUI sends the first messages while `POST /prompt` is still answering."""

    def __init__(self, client: ComfyClient, prompt_id: str):
        self.client = client
        self.prompt_id = prompt_id
        self.events: asyncio.Queue[WsEvent] = asyncio.Queue()

    def __enter__(self) -> PromptWatch:
        self.client._watches[self.prompt_id] = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client._watches.get(self.prompt_id) is self:
            del self.client._watches[self.prompt_id]

    def follow_instead(self, prompt_id: str) -> None:
        """ComfyUI queued the prompt under another id than the one sent: route that id's messages here."""
        self.__exit__()
        self.prompt_id = prompt_id
        self.__enter__()


class ComfyClient:
    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        previews: bool = False,
    ):
        self.base_url = base_url.rstrip("/")
        # Ask for the metadata preview form (it names its prompt); binary frames are read either way.
        self.previews = previews
        self._sampling: str | None = None  # the prompt whose `progress` came last: a legacy preview's owner
        self.client_id = client_id or str(uuid.uuid4())
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ws_url = self.base_url.replace("http", "ws", 1) + "/ws"
        self.reconnects = 0  # connections opened after the first one
        self._session: aiohttp.ClientSession | None = None
        self._ws_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._watches: dict[str, PromptWatch] = {}
        self._closing = False

    # -- lifecycle
    async def start(self) -> None:
        if self._session is not None:
            return
        self._closing = False
        # No total timeout on the session: it would also bound the WebSocket, and a single step can
        # take a minute (no message arrives meanwhile). HTTP calls carry their own timeout.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._ws_task = asyncio.create_task(self._run_socket(), name="comfyui-websocket")

    async def close(self) -> None:
        self._closing = True
        if self._ws_task is not None:
            self._ws_task.cancel()
            try:
                await self._ws_task
            except (asyncio.CancelledError, Exception):
                pass
            self._ws_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def watch(self, prompt_id: str) -> PromptWatch:
        return PromptWatch(self, prompt_id)

    # -- the WebSocket
    async def _run_socket(self) -> None:
        assert self._session is not None
        url = f"{self.ws_url}?clientId={self.client_id}"
        delay = 0.0
        opened = 0
        warned = False
        while not self._closing:
            try:
                # A SaveImageWebsocket PNG can exceed aiohttp's 4 MB default; bounded all the same.
                # No receive timeout: nothing may arrive for a whole sampler step or VAE decode.
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel (close()) that lands
                # as the connect completes, and this loop would then read the open socket for ever.
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    ws = await self._session.ws_connect(url, max_msg_size=MAX_FILE_ANSWER, autoping=True)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not warned:
                    log.warning("ComfyUI WebSocket at %s not reachable (%s); retrying with backoff", url, exc)
                    warned = True
                delay = min(max(delay * 2, self.backoff_initial), self.backoff_max)
                await asyncio.sleep(delay)
                continue
            if self._closing:
                await ws.close()
                return
            delay = 0.0
            warned = False
            if self.previews:
                with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                    await ws.send_str(json.dumps(FEATURE_FLAGS))
            if opened:
                self.reconnects += 1
            opened += 1
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        if not self._connected.is_set():
                            # ComfyUI registers the socket, then sends `status` with our sid: from the
                            # first message on, messages for our prompts reach us, not before.
                            log.info("ComfyUI WebSocket connected (client_id %s)", self.client_id)
                            self._connected.set()
                            self._broadcast(WsEvent("connected"))
                        self._dispatch(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self._dispatch_preview(msg.data)  # previews (only with --preview-method)
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        break
            except (aiohttp.ClientError, OSError) as exc:
                log.info("ComfyUI WebSocket read failed: %s", exc)
            finally:
                self._connected.clear()
                code = ws.close_code
                if not ws.closed:
                    try:
                        await ws.close()
                    except (aiohttp.ClientError, OSError):
                        pass
                if not self._closing:
                    # 1006 with no close frame is how a killed ComfyUI looks (recorded for SIGKILL and SIGTERM).
                    log.warning("ComfyUI WebSocket closed (code %s); reconnecting", code)
                    self._broadcast(WsEvent("disconnected", close_code=code))

    def _dispatch(self, text: str) -> None:
        try:
            msg = json.loads(text)
            kind, data = msg["type"], msg.get("data") or {}
        except (ValueError, KeyError, TypeError):
            log.debug("ignoring a malformed ComfyUI message: %.200s", text)
            return
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if kind == "progress":
            self._sampling = prompt_id
        elif kind in ("executing", "execution_success", "execution_error", "execution_interrupted") and (
                kind != "executing" or data.get("node") is None) and prompt_id == self._sampling:
            self._sampling = None
        if prompt_id is not None:
            watch = self._watches.get(prompt_id)
            if watch is not None:
                watch.events.put_nowait(WsEvent("message", kind, data))
        elif kind == "executing":
            # After a (re)connect ComfyUI tells the running prompt's client which node runs, without a
            # prompt_id: whoever is running may use it as a sign of life.
            self._broadcast(WsEvent("message", kind, data))

    def _dispatch_preview(self, data: bytes) -> None:
        frame = decode_frame(data)
        if frame is None:
            return
        owner = frame.prompt_id or self._sampling
        watch = self._watches.get(owner) if owner is not None else None
        if watch is not None:
            watch.events.put_nowait(WsEvent("preview", "preview", {
                "image": frame.image, "mime": frame.mime, "before_progress": frame.prompt_id is not None}))

    def _broadcast(self, event: WsEvent) -> None:
        for watch in list(self._watches.values()):
            watch.events.put_nowait(event)

    # -- HTTP
    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        timeout: float | None = None,
        limit: int = MAX_JSON_ANSWER,
    ) -> tuple[int, bytes, str]:
        """One HTTP call, its whole time bounded by `timeout` and its answer by `limit` bytes."""
        if self._session is None:
            raise ComfyUnavailable("The ComfyUI client is not started.", {"url": self.base_url})
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, json=json_body, params=params, data=data,
                timeout=aiohttp.ClientTimeout(total=timeout or self.request_timeout),
            ) as resp:
                return resp.status, await read_bounded(resp, limit), resp.content_type
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise ComfyRefused(
                    f"ComfyUI is not running at {self.base_url} (connection refused).",
                    {"url": self.base_url, "reason": "connection_refused"},
                ) from None
            raise ComfyUnavailable(f"Cannot connect to ComfyUI at {self.base_url}: {exc.os_error}.",
                                   {"url": self.base_url, "reason": str(exc)}) from None
        except AnswerTooLarge as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} answered {method} {path} with {exc}: not what "
                                   "ComfyUI sends.", {"url": self.base_url, "limit": exc.limit}) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {method} {path}.",
                                   {"url": self.base_url, "reason": repr(exc)}) from None

    def _json(self, body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise ComfyUnavailable(f"ComfyUI answered {what} with something that is not JSON.",
                                   {"url": self.base_url, "body": body[:500].decode(errors="replace")}) from None

    async def _get_json(self, path: str, *, params: dict[str, str] | None = None,
                        timeout: float | None = None) -> Any:
        status, body, _ = await self._request("GET", path, params=params, timeout=timeout)
        if status != 200:
            raise ComfyUnavailable(f"ComfyUI answered GET {path} with HTTP {status}.",
                                   {"url": self.base_url, "status": status, "body": body[:500].decode(errors="replace")})
        try:
            return json.loads(body)
        except ValueError:
            raise ComfyUnavailable(f"ComfyUI answered GET {path} with something that is not JSON.",
                                   {"url": self.base_url, "body": body[:500].decode(errors="replace")}) from None

    async def system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._get_json("/system_stats", timeout=timeout)

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return await self._get_json(f"/object_info/{node_class}" if node_class else "/object_info")

    async def models(self, folder: str) -> list[str] | None:
        """`GET /models/{folder}`; None when this ComfyUI has no such endpoint or folder."""
        status, body, _ = await self._request("GET", f"/models/{folder}")
        if status == 404:
            return None
        if status != 200:
            raise ComfyUnavailable(f"ComfyUI answered GET /models/{folder} with HTTP {status}.",
                                   {"url": self.base_url, "status": status})
        listing = self._json(body, f"GET /models/{folder}")
        if not isinstance(listing, list):
            raise ComfyUnavailable(f"ComfyUI answered GET /models/{folder} with something that is not a list.",
                                   {"url": self.base_url})
        return [str(name) for name in listing]

    async def view_metadata(self, folder: str, filename: str) -> dict[str, str] | None:
        """`GET /view_metadata/{folder}?filename=`: a safetensors file's `__metadata__` (ComfyUI reads the
        header only); None when ComfyUI answers 404 (no such file, not safetensors, no metadata)."""
        status, body, _ = await self._request("GET", f"/view_metadata/{folder}", params={"filename": filename})
        if status == 404:
            return None
        if status != 200:
            raise ComfyUnavailable(f"ComfyUI answered GET /view_metadata/{folder} with HTTP {status}.",
                                   {"url": self.base_url, "status": status})
        try:
            meta = json.loads(body)
        except ValueError:
            return None
        return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else None

    async def queue(self) -> QueueState:
        q = await self._get_json("/queue")
        # Entries are [number, prompt_id, prompt, extra_data, outputs_to_execute]; pending is heap-ordered.
        running = [e[1] for e in q.get("queue_running", [])]
        pending = [e[1] for e in sorted(q.get("queue_pending", []), key=lambda e: e[0])]
        return QueueState(running=running, pending=pending)

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry, or None: ComfyUI answers `{}` both for unknown and unfinished prompts."""
        h = await self._get_json(f"/history/{prompt_id}")
        return h.get(prompt_id) if isinstance(h, dict) else None

    async def post_prompt(self, workflow: dict[str, Any], prompt_id: str) -> dict[str, Any]:
        """Queue a workflow under our own prompt id (so it can be persisted before ComfyUI sees it).

        A refused workflow raises `JobFailed(code="comfyui_validation_error")` with ComfyUI's error and
        node errors in `details`.
        """
        body = {"prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id}
        status, raw, _ = await self._request("POST", "/prompt", json_body=body)
        text = raw.decode(errors="replace")
        if status == 200:
            return self._json(raw, "POST /prompt")
        raise prompt_refused(status, text)

    async def interrupt(self, prompt_id: str) -> None:
        # With a prompt_id ComfyUI interrupts only if that prompt is the running one.
        await self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id})

    async def free(self) -> None:
        # Only sets flags: ComfyUI's worker unloads after the current prompt (none, under our lock).
        await self._request("POST", "/free", json_body={"unload_models": True, "free_memory": True})

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json_body={"delete": prompt_ids})

    async def upload_image(self, data: bytes, name: str, *, overwrite: bool = True) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("type", "input")
        form.add_field("overwrite", "true" if overwrite else "false")
        status, raw, _ = await self._request("POST", "/upload/image", data=form)
        if status != 200:
            raise JobFailed(f"ComfyUI refused the upload of {name} (HTTP {status}).",
                            {"status": status, "name": name}, code="execution_error")
        return self._json(raw, "POST /upload/image")

    async def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        status, raw, _ = await self._request("GET", "/view", params=params, timeout=VIEW_TIMEOUT,
                                             limit=MAX_FILE_ANSWER)
        if status != 200:
            raise JobFailed(f"ComfyUI could not serve its output image {subfolder}/{filename} (HTTP {status}).",
                            {"status": status, **params}, code="execution_error")
        return raw


def prompt_refused(status: int, text: str) -> JobFailed:
    """A `POST /prompt` answer other than 200 as our job failure."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if status == 400 and isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        node_errors = body.get("node_errors") or {}
        parts = []
        for node_id, entry in node_errors.items():
            for e in entry.get("errors", []):
                detail = f": {e['details']}" if e.get("details") else ""
                parts.append(f"node {node_id} ({entry.get('class_type')}) {e.get('message')}{detail}")
        head = error.get("message") or error.get("type") or "validation failed"
        if error.get("details") and not parts:
            head += f" ({error['details']})"
        message = f"ComfyUI refused the workflow: {head}" + (f": {'; '.join(parts)}" if parts else "") + "."
        return JobFailed(message, {"error": error, "node_errors": node_errors}, code="comfyui_validation_error")
    # A body that is not the usual error JSON: e.g. 500 "Server got itself in trouble" (text/plain).
    first = text.strip().splitlines()[0] if text.strip() else f"HTTP {status}"
    return JobFailed(f"ComfyUI could not accept the workflow (HTTP {status}: {first}).",
                     {"status": status, "body": text[:2000]}, code="comfyui_validation_error")
