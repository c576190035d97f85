"""A fake Ollama on a local port, built from Ollama's documented API (ollama/ollama docs/api.md) and
its server's error answers, for the real `ollama` client to talk to:

- `GET /api/tags`: the pulled models (`name`, `model`, `modified_at`, `size`, `digest`, `details`);
- `POST /api/show`: a model's details and `capabilities` (`completion`, `vision`);
- `POST /api/chat`: streamed (the default: NDJSON chunks `{"model", "created_at", "message": {"role",
  "content"}, "done": false}` then a final `done: true` with `done_reason` and durations) or not
  (`"stream": false`: one object); `format` (JSON schema) and the user message's base64 `images` are
  recorded for the test to check;
- errors as the real server gives them: an unknown model is 404 `{"error": "model \\"x\\" not found,
  try pulling it first"}`, no model is 400 `{"error": "model is required"}`, images that are not
  base64 are 400, and a scripted 500 or an `error` line inside a stream.

Its answers are scripted: `replies` is a queue of `Reply` (content, an HTTP error, a pause); an
empty queue answers `default`, else 500. It runs on its own thread and loop, so the sync CLI (`asyncio.run` inside
click) and the daemon's tests can both reach it; `stop()` makes the port refuse connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

DIGEST = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
VISION_DIGEST = "8dd30f6b0cb19f555f2c7a7ebda861449ea2cc76bf1f44e262931f45fc81d081"


@dataclass
class Reply:
    content: str = ""
    status: int = 200  # not 200: an error answer {"error": error}
    error: str = "an internal error occurred"
    stream_error: str | None = None  # streamed: one chunk, then an {"error": ...} line (as Ollama does mid-stream)
    delay: float = 0.0  # seconds before answering (a timeout test)
    piece: int = 7  # characters of content per streamed chunk (a huge one: one huge JSON line)
    raw: bytes | None = None  # a 200 with this body instead (e.g. a proxy's HTML page): not Ollama's answer


@dataclass
class Model:
    name: str
    digest: str
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    family: str = "llama"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def not_found(name: str) -> web.Response:
    return web.json_response({"error": f"model {json.dumps(name)} not found, try pulling it first"}, status=404)


class FakeOllama:
    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.replies: deque[Reply] = deque()
        self.chats: list[dict[str, Any]] = []  # every /api/chat body, in order
        self.default: Reply | None = None  # the answer once `replies` is empty (None: a 500)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-ollama", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- scripting
    def reset(self) -> None:
        self.models = {"llama3.1:8b": Model("llama3.1:8b", DIGEST),
                       "llava:7b": Model("llava:7b", VISION_DIGEST, ["completion", "vision"], "clip")}
        self.replies.clear()
        self.chats.clear()
        self.default = None

    def answer(self, *replies: Reply | str | dict) -> None:
        for r in replies:
            self.replies.append(r if isinstance(r, Reply) else Reply(json.dumps(r) if isinstance(r, dict) else r))

    def find(self, name: str) -> Model | None:
        return self.models.get(name) or self.models.get(f"{name}:latest")

    # -- the server
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_get("/", self.root)
        return app

    async def root(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": m.name, "model": m.name, "modified_at": "2024-11-04T14:56:49.277302595-07:00",
             "size": 4920753328, "digest": m.digest,
             "details": {"parent_model": "", "format": "gguf", "family": m.family, "families": [m.family],
                         "parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}
            for m in self.models.values()]})

    async def show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("model") or body.get("name") or ""
        model = self.find(name)
        if model is None:
            return not_found(name)
        return web.json_response({
            "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {model.name}\n",
            "parameters": "stop \"<|eot_id|>\"", "template": "{{ .Prompt }}",
            "details": {"parent_model": "", "format": "gguf", "family": model.family, "families": [model.family],
                        "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": model.family}, "capabilities": model.capabilities,
            "modified_at": "2024-11-04T14:56:49.277302595-07:00"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid character 'x' looking for beginning of value"}, status=400)
        name = body.get("model") or ""
        if not name:
            return web.json_response({"error": "model is required"}, status=400)
        model = self.find(name)
        if model is None:
            return not_found(name)
        for message in body.get("messages") or []:
            for image in message.get("images") or []:
                try:
                    base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    return web.json_response({"error": "illegal base64 data at input byte 0"}, status=400)
        self.chats.append(body)
        reply = self.replies.popleft() if self.replies else self.default or Reply(status=500)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return web.json_response({"error": reply.error}, status=reply.status)
        if reply.raw is not None:
            return web.Response(body=reply.raw, content_type="text/html")
        final = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                 "done_reason": "stop", "done": True, "total_duration": 4883583458, "load_duration": 1334875,
                 "prompt_eval_count": 26, "prompt_eval_duration": 342546000, "eval_count": 282,
                 "eval_duration": 4535599000}
        if body.get("stream") is False:
            final["message"]["content"] = reply.content
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        pieces = [reply.content[i:i + reply.piece] for i in range(0, len(reply.content), reply.piece)]
        for piece in pieces[:1] if reply.stream_error else pieces:
            chunk = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": piece},
                     "done": False}
            await response.write((json.dumps(chunk) + "\n").encode())
        if reply.stream_error:
            await response.write((json.dumps({"error": reply.stream_error}) + "\n").encode())
        else:
            await response.write((json.dumps(final) + "\n").encode())
        await response.write_eof()
        return response

    # -- running it
    def start(self) -> FakeOllama:
        self.reset()
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
            self._runner = None
        self.call(self._cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _cancel_rest(self) -> None:
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


def _session_fake():
    fake = FakeOllama().start()
    yield fake
    fake.stop()


def _fresh(fake: FakeOllama) -> FakeOllama:
    fake.reset()
    return fake


try:  # fixtures for the test modules that import them (`from tests.fake_ollama import ollama_fake`)
    import pytest

    ollama_server = pytest.fixture(scope="session", name="ollama_server")(_session_fake)

    @pytest.fixture
    def ollama_fake(ollama_server: FakeOllama) -> FakeOllama:
        """The session's fake Ollama, reset: the two default models pulled, no replies scripted."""
        return _fresh(ollama_server)
except ImportError:  # pragma: no cover - used outside pytest
    pass
