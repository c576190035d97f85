"""The one door to Ollama: the official `ollama` client at `ollama_url`, its failures turned into our
codes where they enter, and structured questions asked with a JSON schema (Ollama's `format`).

- nothing answers (connection refused, the server went away)  -> `ollama_unavailable`
- the model is not pulled (not in /api/tags, or a 404 from /api/chat) -> `ollama_model_missing`,
  whose message is the fix: `ollama pull <model>`
- no answer within `ollama_timeout` seconds                    -> `ollama_timeout`
- Ollama's own error (a 500, an `error` line in a stream)      -> `ollama_error`
- a 200 that is not Ollama's answer (not JSON, another shape: a proxy's page), or an answer past
  MAX_OLLAMA_ANSWER bytes (read in pieces, stopped there)        -> `ollama_error` (502)
- an answer that does not match the schema is asked again once, with the validation error; a second
  bad answer                                                   -> `assistant_answer_invalid`

Answers are streamed: a long answer keeps the connection busy, and the timeout bounds the whole call
(which the size bound keeps true: a huge single line parsed at once held the loop past it).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import ollama
from pydantic import BaseModel, ValidationError

from sidecar.answer_limits import AnswerTooLarge
from sidecar.errors import (
    AssistantAnswerInvalid, OllamaFailed, OllamaModelMissing, OllamaTimeout, OllamaUnavailable, SidecarError,
)

M = TypeVar("M", bound=BaseModel)
# A chat answer is a few KB of JSON, /api/show's a few hundred (license texts): 16 MiB is no answer of Ollama's.
MAX_OLLAMA_ANSWER = 16 * 1024 * 1024


class _Bounded(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int):
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise AnswerTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(httpx.AsyncBaseTransport):
    """httpx's transport with every answer's body counted as it arrives and stopped past `limit` bytes
    (`AnswerTooLarge`): the official client reads a whole answer (or a whole streamed line) before it
    parses it, so the bound has to sit under it."""

    def __init__(self, limit: int, inner: httpx.AsyncBaseTransport | None = None):
        self._limit = limit
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._limit:
            await response.aclose()
            raise AnswerTooLarge(self._limit, int(length))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Bounded(response.stream, self._limit), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(frozen=True)
class ModelRef:
    """A model as Ollama has it: the name asked for and the digest of what answered (provenance)."""

    name: str
    digest: str | None


def pull_fix(model: str) -> str:
    return f"ollama pull {model}"


class OllamaAssistant:
    def __init__(self, url: str, timeout: float, max_answer: int = MAX_OLLAMA_ANSWER):
        self.url = url
        self.timeout = timeout
        self._client = ollama.AsyncClient(host=url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                          transport=BoundedTransport(max_answer))

    async def __aenter__(self) -> OllamaAssistant:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    # -- errors where they enter
    def _missing(self, model: str) -> OllamaModelMissing:
        return OllamaModelMissing(
            f"Ollama at {self.url} has no model {model!r}: run `{pull_fix(model)}` (or set another model in "
            "the configuration). Nothing was written.", {"model": model, "fix": pull_fix(model), "url": self.url})

    def _translate(self, exc: BaseException, model: str | None) -> SidecarError:
        if isinstance(exc, AnswerTooLarge):
            return OllamaFailed(f"Ollama at {self.url} answered with {exc}: not an answer Ollama gives. Nothing "
                                "was written; check ollama_url names Ollama.", {"limit": exc.limit, "url": self.url})
        if isinstance(exc, (ValueError, TypeError, AttributeError)):  # JSON or pydantic, from the client's parsing
            return OllamaFailed(f"Ollama at {self.url} answered with something that is not an answer Ollama gives "
                                f"({type(exc).__name__}: {str(exc)[:200]}). Nothing was written; check ollama_url "
                                "names Ollama (not a proxy or another server).", {"url": self.url})
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404 and model is not None:
                return self._missing(model)
            return OllamaFailed(f"Ollama at {self.url} answered an error: {exc.error} (status {exc.status_code}). "
                                "Nothing was written; see Ollama's log (`ollama serve` output).",
                                {"status": exc.status_code, "ollamaError": str(exc.error)[:500], "url": self.url})
        if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
            return OllamaTimeout(f"Ollama at {self.url} did not answer within {self.timeout:g} s (ollama_timeout). "
                                 "Nothing was written. A first call loads the model: try again, or raise "
                                 "ollama_timeout.", {"timeout": self.timeout, "url": self.url})
        return OllamaUnavailable(f"Ollama does not answer at {self.url}: start it (`ollama serve`, or open the "
                                 "Ollama app), or set ollama_url (SIDECAR_OLLAMA_URL). Nothing was written.",
                                 {"url": self.url, "reason": f"{type(exc).__name__}: {exc}"[:300]})

    async def _guard(self, call: Any, model: str | None) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout)
        except SidecarError:
            raise
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, asyncio.TimeoutError, TimeoutError,
                OSError, AnswerTooLarge) as exc:
            raise self._translate(exc, model) from None
        except (ValueError, TypeError, AttributeError) as exc:
            # The official client parses each line as it comes (json.loads, its pydantic models): an answer
            # of another shape fails there. Only the client's own calls run under this guard.
            raise self._translate(exc, model) from None

    # -- what the assistants ask
    async def installed(self) -> dict[str, str | None]:
        """Every pulled model's name -> digest (GET /api/tags)."""
        listing = await self._guard(self._client.list(), None)
        return {m.model: m.digest for m in listing.models if m.model}

    async def model(self, name: str) -> ModelRef:
        """The pulled model `name` (a bare name means its `:latest` tag, as Ollama reads it)."""
        models = await self.installed()
        for candidate in (name, f"{name}:latest"):
            if candidate in models:
                return ModelRef(name, models[candidate])
        raise self._missing(name)

    async def require_vision(self, model: ModelRef, setting: str = "vision_model") -> None:
        """POST /api/show: a model that lists its capabilities without `vision` cannot take images (Ollama
        would fail the chat); say so before anything runs. An Ollama too old to list them is trusted."""
        shown = await self._guard(self._client.show(model.name), model.name)
        capabilities = list(shown.capabilities or [])
        if capabilities and "vision" not in capabilities:
            raise OllamaModelMissing(
                f"{model.name} cannot look at images (its capabilities: {', '.join(capabilities)}): set {setting} to "
                "a vision model, e.g. `ollama pull llava:7b`. Nothing was written.",
                {"model": model.name, "fix": pull_fix("llava:7b"), "capabilities": capabilities})

    async def ask(self, model: ModelRef, system: str, user: str, answer: type[M],
                  images: list[bytes] | None = None) -> M:
        """One structured question: `answer`'s JSON schema is the `format`; a malformed answer is asked
        again once, told what was wrong."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if images:
            messages[1]["images"] = [base64.b64encode(i).decode("ascii") for i in images]
        schema = answer.model_json_schema()
        problem = ""
        for _attempt in range(2):
            text = await self._guard(self._chat(model.name, messages, schema), model.name)
            try:
                return answer.model_validate_json(text)
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                                    for e in exc.errors(include_url=False))[:600]
                messages = [*messages, {"role": "assistant", "content": text[:4000]},
                            {"role": "user", "content": "That answer does not match the JSON schema "
                             f"({problem}). Answer again with JSON only, matching the schema."}]
        raise AssistantAnswerInvalid(
            f"{model.name} answered twice with JSON that does not match what was asked ({problem}). Nothing was "
            "written. Try again, or configure a stronger model (prompt_model, vision_model).",
            {"model": model.name, "problem": problem})

    async def _chat(self, model: str, messages: list[dict[str, Any]], schema: dict[str, Any]) -> str:
        parts: list[str] = []
        stream = await self._client.chat(model=model, messages=messages, format=schema, stream=True,
                                         options={"temperature": 0})
        async for chunk in stream:
            parts.append(chunk.message.content or "")
        return "".join(parts)
