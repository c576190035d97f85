"""Whatever the change-set schema sent to Ollama admits is accepted: Ollama constrains the model's answer
with the schema (`format`), so a model may answer any instance of it, every field it allows filled. Each
instance hypothesis-jsonschema draws from the schema exactly as the official client sent it (recorded by
the fake Ollama) validates as a `ChangeSet` and applies to a prompt with every change accounted for; and,
answered by the fake Ollama, is taken at the first answer (no "does not match the schema" retry)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from sidecar.assist.apply import apply_changes
from sidecar.assist.changes import ChangeSet
from sidecar.assist.character import CharacterSheet
from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.assist.refine import refine
from tests.fake_ollama import FakeOllama, Reply

SHEET = CharacterSheet(trigger="spyke_plasma_v1", locked=["right bracer", "ginger hair"], locked_negative=["mirrored"])
PROMPT = "spyke_plasma_v1, 1boy, right bracer, ginger hair, standing, rooftop, noon"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def schema(fake: FakeOllama) -> dict:
    """The `format` of one refinement, as the official `ollama` client put it on the wire."""
    fake.reset()
    fake.answer('{"changes": []}')
    asyncio.run(_refine(fake))
    return fake.chats[0]["format"]


async def _refine(fake: FakeOllama):
    async with OllamaAssistant(fake.url, timeout=10) as assistant:
        return await refine(assistant, prompt=PROMPT, feedback="look left, dusk", sheet=SHEET,
                            prompt_model="llama3.1:8b", vision_model="llava:7b")


@functools.cache
def answers(schema_text: str) -> st.SearchStrategy[dict]:
    return from_schema(json.loads(schema_text))


def test_the_sent_schema_gives_each_op_its_own_shape(schema: dict) -> None:
    shapes = {name: d for name, d in schema["$defs"].items() if "op" in d.get("properties", {})}
    admits_replacement = {d["properties"]["op"]["const"]: "replacement" in d["properties"] for d in shapes.values()}
    assert admits_replacement == {"add": False, "remove": False, "replace": True}
    replace = next(d for d in shapes.values() if d["properties"]["op"]["const"] == "replace")
    assert "replacement" in replace["required"]


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_answer_the_schema_admits_validates_and_applies(schema: dict, data: st.DataObject) -> None:
    answer = data.draw(answers(json.dumps(schema)), label="answer")
    change_set = ChangeSet.model_validate_json(json.dumps(answer))
    result = apply_changes(PROMPT.split(", "), change_set, SHEET)
    assert len(result.outcomes) == len(change_set.changes)
    assert result.tags[0] == "spyke_plasma_v1"


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_daemon_takes_any_admitted_answer_from_ollama_at_once(fake: FakeOllama, schema: dict,
                                                                  data: st.DataObject) -> None:
    answer = data.draw(answers(json.dumps(schema)), label="answer")
    fake.reset()
    fake.answer(Reply(json.dumps(answer)))
    done = asyncio.run(_refine(fake))
    assert len(fake.chats) == 1, "the answer was refused and asked again"
    assert len(done.applied.outcomes) == len(answer["changes"])
