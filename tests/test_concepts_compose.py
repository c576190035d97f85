"""The concept builder's invariants, property-based, with the model's answers drawn from the very JSON
schemas the official `ollama` client sends as `format` (so any answer Ollama could let a model give):

- composing keeps the character (trigger first, every locked trait verbatim), every locked field's tags
  verbatim, nothing the fields do not say, nothing the character forbids, and no field lost, over random
  field sets and hostile answers; answered through the fake Ollama too;
- the feedback interpreter never changes a locked field, whatever it answers;
- a concept file reads back as it was written, whatever its texts hold.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from sidecar.assist.character import CharacterSheet
from sidecar.assist.tags import FLIP_TAGS, key, mirrors_any, split_tags
from sidecar.concepts import store
from sidecar.concepts.compose import assemble, compose
from sidecar.concepts.fields import ALL_FIELDS, FIELD_NAMES, Concept, ConceptFields
from sidecar.concepts.grounding import FREE, stem, words
from sidecar.concepts.interpret import Feedback, apply_changes, interpret
from sidecar.config import Settings
from tests.fake_ollama import FakeOllama, Reply

SHEET = CharacterSheet(trigger="spyke_plasma_v1", locked=["ginger hair", "bracer on right forearm"],
                       locked_negative=["mirrored", "bad hands"])
WORDS = ["rooftop", "dusk", "city", "boy", "girl", "standing", "sitting", "smile", "cloak", "rain", "neon", "quiet",
         "warm", "light", "ink", "manga", "tower", "left", "right", "bracer", "forearm", "mirrored", "bad", "hands",
         "é", "the", "on"]
PROPS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

phrase = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
value = st.lists(phrase, max_size=3).map(", ".join)


@st.composite
def field_sets(draw) -> ConceptFields:
    data = {name: {"value": draw(value), "locked": draw(st.booleans())} for name in FIELD_NAMES}
    data["extra"] = {"tags": draw(st.lists(phrase, max_size=3)), "locked": draw(st.booleans())}
    return ConceptFields.model_validate(data)


def schema_of(fake: FakeOllama, run) -> dict:
    fake.reset()
    fake.default = Reply("{}")  # any answer: only the `format` the client sent is wanted
    try:
        asyncio.run(run(fake))
    except Exception:  # noqa: BLE001 - the bad answer fails the call; the request was recorded
        pass
    return fake.chats[0]["format"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


def _settings(fake: FakeOllama) -> Settings:
    return Settings(ollama_url=fake.url, ollama_timeout=5)


@pytest.fixture(scope="module")
def compose_schema(fake: FakeOllama) -> dict:
    fields = ConceptFields.model_validate({"subject": {"value": "boy"}})
    return schema_of(fake, lambda f: compose(fields, SHEET, "sd15", _settings(f)))


@pytest.fixture(scope="module")
def interpret_schema(fake: FakeOllama) -> dict:
    fed = Feedback(prompt="boy", picks=1, rejects=[], text="more", preferences=[])
    return schema_of(fake, lambda f: interpret(ConceptFields(), SHEET, fed, _settings(f)))


@functools.cache
def answers(schema_text: str) -> st.SearchStrategy[dict]:
    return from_schema(json.loads(schema_text))


def check_composed(fields: ConceptFields, tags, refused) -> None:
    """What every composed prompt keeps, whatever the model said."""
    got = [t.tag for t in tags]
    assert got[:3] == ["spyke_plasma_v1", "ginger hair", "bracer on right forearm"]
    keys = [key(t) for t in got]
    assert len(keys) == len(set(keys))
    refused_keys = {(r.field, key(r.tag)) for r in refused}
    vocab = set().union(*(words(fields.text(n)) for n in ALL_FIELDS), words("spyke_plasma_v1 ginger hair bracer on "
                                                                           "right forearm"))
    for t in tags:
        # Nothing the character forbids.
        assert key(t.tag) not in FLIP_TAGS and key(t.tag) not in {"mirrored", "bad hands"}
        assert mirrors_any(t.tag, SHEET.locked) is None, t  # no bracer moved to the left forearm
        # Nothing invented: every content word is the concept's (or the field's own name).
        extra = {stem(w) for w in re.findall(r"[a-z0-9]+", key(t.tag)) if w not in FREE} - vocab - words(t.field)
        assert not extra, (t, extra)
        if t.source == "model":
            assert not fields.locked(t.field) and fields.text(t.field)
    for name in ALL_FIELDS:
        own = split_tags(fields.text(name))
        if fields.locked(name):  # verbatim, or refused for the character's sake
            for tag in own:
                assert tag in got or (name, key(tag)) in refused_keys or key(tag) in keys, (name, tag)
        elif own:  # no field lost: at least one part of it in the prompt, unless all of it is forbidden
            assert any(t.field == name for t in tags) or all((name, key(x)) in refused_keys or key(x) in keys
                                                             for x in own), name


@PROPS
@given(fields=field_sets(), data=st.data())
def test_composing_keeps_locks_and_the_character_and_invents_nothing(compose_schema: dict, fields: ConceptFields,
                                                                     data: st.DataObject) -> None:
    from sidecar.concepts.compose import ComposeAnswer

    answer = ComposeAnswer.model_validate(data.draw(answers(json.dumps(compose_schema)), label="answer"))
    tags, refused = assemble(fields, SHEET, answer)
    check_composed(fields, tags, refused)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fields=field_sets(), data=st.data())
def test_a_hostile_answer_through_ollama_changes_no_lock(fake: FakeOllama, compose_schema: dict,
                                                         fields: ConceptFields, data: st.DataObject) -> None:
    answer = data.draw(answers(json.dumps(compose_schema)), label="answer")
    fake.reset()
    fake.answer(Reply(json.dumps(answer)))
    done = asyncio.run(compose(fields, SHEET, data.draw(st.sampled_from(["sd15", "sdxl", "flux"])), _settings(fake)))
    if len(fake.chats) == 1:  # no field the model may render: no question at all
        assert done.composer == "ollama"
    check_composed(fields, done.tags, done.refused)
    if done.style == "tags":
        assert done.prompt == ", ".join(t.tag for t in done.tags)
    else:
        assert all(t.tag in done.prompt for t in done.tags) and done.prompt.startswith("spyke_plasma_v1")


def test_the_sentence_style_is_for_flux_and_tags_for_the_rest() -> None:
    fields = ConceptFields.model_validate({"subject": {"value": "1boy on a rooftop", "locked": True},
                                           "lighting": {"value": "warm dusk light"}})
    tags, _ = assemble(fields, SHEET, None)
    from sidecar.concepts.compose import prompt_text

    assert prompt_text(tags, "tags") == "spyke_plasma_v1, ginger hair, bracer on right forearm, 1boy on a rooftop, " \
                                        "warm dusk light"
    assert prompt_text(tags, "sentence") == "spyke_plasma_v1, ginger hair, bracer on right forearm. 1boy on a " \
                                            "rooftop. warm dusk light."


@PROPS
@given(fields=field_sets(), data=st.data())
def test_the_interpreter_never_changes_a_locked_field(interpret_schema: dict, fields: ConceptFields,
                                                      data: st.DataObject) -> None:
    from sidecar.concepts.interpret import FieldChanges

    answer = FieldChanges.model_validate(data.draw(answers(json.dumps(interpret_schema)), label="answer"))
    after, outcomes = apply_changes(fields, answer, SHEET)
    assert len(outcomes) == len(answer.changes)
    for name in ALL_FIELDS:
        assert after.locked(name) == fields.locked(name)
        if fields.locked(name):
            assert getattr(after, name) == getattr(fields, name)
        changed = [o for o in outcomes if o.field == name and o.status == "applied"]
        if not changed:
            assert getattr(after, name) == getattr(fields, name)
        for tag in split_tags(after.text(name)):
            if tag not in split_tags(fields.text(name)):
                assert key(tag) not in {"mirrored", "bad hands", *FLIP_TAGS}


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fields=field_sets(), data=st.data())
def test_the_interpreter_through_ollama_keeps_every_locked_field(fake: FakeOllama, interpret_schema: dict,
                                                                 fields: ConceptFields, data: st.DataObject) -> None:
    answer = data.draw(answers(json.dumps(interpret_schema)), label="answer")
    fake.reset()
    fake.answer(Reply(json.dumps(answer)))
    fed = Feedback(prompt="x", picks=1, rejects=["busy background"], text="calmer", preferences=["rejected: rain"])
    done = asyncio.run(interpret(fields, SHEET, fed, _settings(fake)))
    assert len(fake.chats) == 1 and done.model == "llama3.1:8b" and not done.messages
    for name in ALL_FIELDS:
        if fields.locked(name):
            assert getattr(done.fields, name) == getattr(fields, name)
    assert "rejected: rain" in fake.chats[0]["messages"][1]["content"]


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=60).map(str.strip)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(values=st.lists(texts, min_size=8, max_size=8), locks=st.lists(st.booleans(), min_size=9, max_size=9),
       extra=st.lists(texts.filter(lambda t: t and "," not in t), max_size=3))
def test_a_concept_file_reads_back_as_written(tmp_path_factory: pytest.TempPathFactory, values: list[str],
                                              locks: list[bool], extra: list[str]) -> None:
    root = tmp_path_factory.mktemp("p")
    data = {name: {"value": v, "locked": lock} for name, v, lock in zip(FIELD_NAMES, values, locks)}
    data["extra"] = {"tags": extra, "locked": locks[8]}
    concept = Concept.model_validate({"fields": data, "render": {"checkpoint": "a \"b\".safetensors",
                                                                 "loras": [{"id": "x", "strength": 0.5}]}})
    store.write(root, "c", concept, new=True)
    assert tomllib.loads((root / "concepts" / "c.toml").read_text())  # plain TOML
    assert store.read(root, "c") == concept


def test_a_hand_edited_concept_file_with_a_typo_is_named_not_overwritten(tmp_path: Path) -> None:
    from sidecar.errors import ConceptInvalid

    (tmp_path / "concepts").mkdir()
    bad = tmp_path / "concepts" / "c.toml"
    bad.write_text("[subjekt]\nvalue = \"x\"\n")
    with pytest.raises(ConceptInvalid, match="subjekt"):
        store.read(tmp_path, "c")
    assert bad.read_text() == "[subjekt]\nvalue = \"x\"\n"
