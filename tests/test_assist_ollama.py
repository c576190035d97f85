"""Prompt refinement against a fake Ollama (tests/fake_ollama.py) through the official `ollama` client:
the structured change set is asked with its JSON schema, validated, retried once when malformed, and
every failure of the server (not running, model missing, timeout, 500) is one clear error naming the
fix, with nothing written."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import ollama
import pytest
from PIL import Image

from sidecar.assist.changes import ChangeSet
from sidecar.assist.character import CharacterSheet
from sidecar.assist.ollama_client import MAX_OLLAMA_ANSWER, OllamaAssistant
from sidecar.assist.refine import refine
from sidecar.errors import (
    AssistantAnswerInvalid, OllamaFailed, OllamaModelMissing, OllamaTimeout, OllamaUnavailable,
)
from tests.fake_ollama import DIGEST, VISION_DIGEST, FakeOllama, Reply, ollama_fake, ollama_server  # noqa: F401

SHEET = CharacterSheet(trigger="spyke_plasma_v1", locked=["right bracer", "left knee pauldron", "ginger hair",
                                                          "white cloak"], locked_negative=["mirrored"])
PROMPT = "spyke_plasma_v1, 1boy, full body, right bracer, ginger hair, white cloak, looking at viewer, noon"
LOOK_LEFT = {"changes": [
    {"op": "replace", "region": "pose", "tag": "looking at viewer", "replacement": "looking to the left"},
    {"op": "replace", "region": "lighting", "tag": "noon", "replacement": "dusk"},
    {"op": "remove", "region": "appearance", "tag": "right bracer"},        # locked: refused
    {"op": "add", "region": "appearance", "tag": "left bracer"},            # the mirror: refused
    {"op": "add", "region": "setting", "tag": "simple background"}], "summary": "look left at dusk"}


async def _refine(fake: FakeOllama, **kw) -> object:
    async with OllamaAssistant(fake.url, timeout=kw.pop("timeout", 10)) as assistant:
        return await refine(assistant, prompt=kw.pop("prompt", PROMPT), feedback="look left, dusk, less cluttered",
                            sheet=SHEET, prompt_model=kw.pop("prompt_model", "llama3.1:8b"),
                            vision_model="llava:7b", **kw)


async def test_the_fake_answers_the_real_client_streamed_and_not(ollama_fake: FakeOllama) -> None:
    client = ollama.AsyncClient(host=ollama_fake.url)
    listing = await client.list()
    assert {m.model: m.digest for m in listing.models}["llama3.1:8b"] == DIGEST
    shown = await client.show("llava:7b")
    assert "vision" in (shown.capabilities or [])
    ollama_fake.answer('{"changes": []}', '{"changes": []}')
    whole = await client.chat("llama3.1:8b", [{"role": "user", "content": "hi"}], stream=False, format="json")
    assert whole.message.content == '{"changes": []}' and whole.done
    parts = [c.message.content async for c in await client.chat("llama3.1:8b", [{"role": "user", "content": "hi"}],
                                                                     stream=True)]
    assert "".join(parts) == '{"changes": []}' and len(parts) > 2
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat("qwen9:1b", [{"role": "user", "content": "hi"}], stream=False)
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "qwen9:1b" not found, try pulling it first'
    await client.close()


async def test_feedback_becomes_a_change_set_applied_under_the_character_invariants(ollama_fake: FakeOllama) -> None:
    ollama_fake.answer(LOOK_LEFT)
    result = await _refine(ollama_fake)
    assert result.refined == ("spyke_plasma_v1, 1boy, full body, right bracer, ginger hair, white cloak, "
                              "looking to the left, dusk, simple background")
    refused = {o.change.tag: o.note for o in result.applied.refused}
    assert set(refused) == {"right bracer", "left bracer"} and "locked" in refused["right bracer"]
    assert "- looking at viewer" in result.diff and "+ looking to the left" in result.diff
    assert "  right bracer" in result.diff
    prov = result.refined_from
    assert (prov.original_prompt, prov.refined_prompt, prov.model, prov.model_digest) == (
        PROMPT, result.refined, "llama3.1:8b", DIGEST)
    # Ollama was asked with the change set's JSON schema as `format`, and told the locked traits.
    chat = ollama_fake.chats[-1]
    assert chat["format"] == ChangeSet.model_json_schema()
    assert "right bracer" in chat["messages"][1]["content"] and chat["options"]["temperature"] == 0


async def test_a_malformed_answer_is_asked_again_once_then_a_clear_error(ollama_fake: FakeOllama) -> None:
    ollama_fake.answer("not json at all", LOOK_LEFT)
    result = await _refine(ollama_fake)
    assert "dusk" in result.refined
    retry = ollama_fake.chats[-1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "not json at all"}
    assert "does not match the JSON schema" in retry[-1]["content"]
    ollama_fake.answer('{"changes": [{"op": "flip", "region": "pose", "tag": "x"}]}',
                       '{"changes": [{"op": "replace", "region": "pose", "tag": "a, b", "replacement": "c"}]}')
    with pytest.raises(AssistantAnswerInvalid, match="answered twice"):
        await _refine(ollama_fake)


async def test_look_sends_the_picked_image_to_the_vision_model_first(ollama_fake: FakeOllama, tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 24), "orange").save(buf, format="PNG")
    ollama_fake.answer({"observations": ["he looks at the viewer", "bright noon light"]}, LOOK_LEFT)
    result = await _refine(ollama_fake, look_image=tmp_path / "p.png", look_bytes=buf.getvalue())
    vision, text = ollama_fake.chats[-2:]
    assert vision["model"] == "llava:7b" and base64.b64decode(vision["messages"][1]["images"][0]) == buf.getvalue()
    assert "bright noon light" in text["messages"][1]["content"] and "images" not in text["messages"][1]
    assert (result.refined_from.vision_model, result.refined_from.vision_model_digest) == ("llava:7b", VISION_DIGEST)


async def test_look_refuses_a_vision_model_that_cannot_see(ollama_fake: FakeOllama, tmp_path: Path) -> None:
    ollama_fake.models["llava:7b"].capabilities = ["completion"]  # /api/show says: no vision
    with pytest.raises(OllamaModelMissing, match="cannot look at images"):
        await _refine(ollama_fake, look_image=tmp_path / "p.png", look_bytes=b"\x89PNG")
    assert ollama_fake.chats == []


@pytest.mark.parametrize(("setup", "error", "words"), [
    ("missing", OllamaModelMissing, "ollama pull llama3.1:8b"),
    ("chat404", OllamaModelMissing, "ollama pull llama3.1:8b"),
    ("500", OllamaFailed, "status 500"),
    ("stream_error", OllamaFailed, "out of memory"),
    ("timeout", OllamaTimeout, "did not answer within 0.3 s"),
    # A 200 that is not Ollama's answer (a proxy's page), and an answer past the bound: 502s, never a
    # 500, and nothing past the bound is held (a 6.5 GB answer used to be read whole, 40 s past the timeout).
    ("not_json", OllamaFailed, "not an answer Ollama gives"),
    ("huge", OllamaFailed, f"at most {MAX_OLLAMA_ANSWER} are read"),
])
async def test_every_failure_of_the_server_is_one_clear_error(ollama_fake: FakeOllama, setup: str, error: type,
                                                              words: str) -> None:
    if setup == "missing":
        del ollama_fake.models["llama3.1:8b"]
    elif setup == "chat404":  # deleted between the listing and the chat: Ollama's 404 body
        ollama_fake.answer(Reply(status=404, error='model "llama3.1:8b" not found, try pulling it first'))
    elif setup == "500":
        ollama_fake.answer(Reply(status=500, error="llama runner process has terminated"))
    elif setup == "stream_error":
        ollama_fake.answer(Reply('{"changes": []}', stream_error="out of memory"))
    elif setup == "not_json":
        ollama_fake.answer(Reply(raw=b"<html><body>502 Bad Gateway</body></html>"))
    elif setup == "huge":  # one streamed line past the bound
        ollama_fake.answer(Reply("x" * (MAX_OLLAMA_ANSWER + 1024), piece=MAX_OLLAMA_ANSWER + 1024))
    else:
        ollama_fake.answer(Reply(json.dumps(LOOK_LEFT), delay=2))
    with pytest.raises(error) as caught:
        await _refine(ollama_fake, timeout=0.3 if setup == "timeout" else 10)
    assert words in caught.value.message
    if setup.startswith(("missing", "chat404")):
        assert caught.value.details["fix"] == "ollama pull llama3.1:8b"


async def test_ollama_not_running_names_how_to_start_it(ollama_fake: FakeOllama) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with OllamaAssistant(f"http://127.0.0.1:{port}", timeout=5) as assistant:
        with pytest.raises(OllamaUnavailable, match="ollama serve"):
            await refine(assistant, prompt=PROMPT, feedback="x", sheet=SHEET, prompt_model="llama3.1:8b",
                         vision_model="llava:7b")
