"""The concept builder through the real app (scripted backend, the fake Ollama driven by the official
`ollama` client): a concept made in fields, three rounds of four variations with the subject locked
throughout, the artist's picks, rejections and words read into field changes (never on a locked field),
the intent accumulating every round and feeding the interpreter its preferences, and the picked image
made into a page's prompt file; with Ollama absent every step still works and says why; bad input is a
clear 4xx that changes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from pipeline_stage.prompts import load_prompt
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import Settings
from tests.fake_ollama import FakeOllama, Reply, ollama_fake, ollama_server  # noqa: F401

TRIGGER = "spyke_plasma_v1"
TRAITS = ["ginger hair", "white cloak", "bracer on right forearm", "pauldron on left knee"]
SUBJECT = "1boy on a rooftop"
CONCEPT = {"name": "rooftop", "fields": {
    "subject": {"value": SUBJECT, "locked": True},
    "background": {"value": "city rooftops at dusk, water tower"},
    "lighting": {"value": "dusk light"}, "mood": {"value": "quiet"}},
    "render": {"width": 64, "height": 96}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), root)
    return root


@pytest.fixture
def settings(tmp_path: Path, project: Path, ollama_fake: FakeOllama) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project,
                    ollama_url=ollama_fake.url, ollama_timeout=5)


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


async def settled(client, job_ids: list[str]) -> list[dict]:
    for _ in range(500):
        jobs = [await (await client.get(f"/jobs/{j}")).json() for j in job_ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            assert all(j["status"] == "succeeded" for j in jobs), jobs
            return jobs
        await asyncio.sleep(0.02)
    raise AssertionError("the round's jobs did not finish")


def compose_answer(*parts: tuple[str, str]) -> dict:
    return {"parts": [{"field": f, "text": t} for f, t in parts]}


async def test_three_rounds_with_the_subject_locked_become_a_page_prompt(client, project: Path,
                                                                          ollama_fake: FakeOllama) -> None:
    resp = await client.post("/concepts", json=CONCEPT)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["file"] == "concepts/rooftop.toml" and made["character"]["locked"] == TRAITS
    on_disk = tomllib.loads((project / "concepts" / "rooftop.toml").read_text())
    assert on_disk["subject"] == {"value": SUBJECT, "locked": True}

    # Round 1. The prompt engineer's answer is hostile in places: it renders the locked subject as
    # something else, invents a skyline and a tag for an empty field, slips in a mirrored trait.
    ollama_fake.answer(compose_answer(
        ("subject", "1girl"), ("background", "rooftops"), ("background", "city skyline"), ("background", "dusk"),
        ("background", "water tower"), ("lighting", "dusk light"), ("mood", "quiet"), ("outfit", "school uniform"),
        ("extra", "bracer on left forearm")))
    resp = await client.post("/concepts/rooftop/rounds", json={"seed": 100})
    assert resp.status == 202, await resp.text()
    first = await resp.json()
    assert first["round"] == 1 and len(first["jobs"]) == 4 and first["groupId"]
    composed = first["composed"]
    tags = [t["tag"] for t in composed["tags"]]
    assert composed["composer"] == "ollama" and composed["style"] == "tags"
    assert tags[:5] == [TRIGGER, *TRAITS] and SUBJECT in tags
    assert "1girl" not in tags and "city skyline" not in tags and "school uniform" not in tags
    assert {r["tag"] for r in composed["refused"]} >= {"1girl", "city skyline", "school uniform",
                                                        "bracer on left forearm"}
    assert composed["prompt"] == ", ".join(tags)
    jobs = await settled(client, [j["id"] for j in first["jobs"]])
    assert [j["params"]["seed"] for j in jobs] == [100, 101, 102, 103]
    assert all(j["params"]["prompt"] == composed["prompt"] and j["source"] == "concepts" for j in jobs)
    assert all("mirrored" in j["params"]["negativePrompt"] for j in jobs)  # locked_negative, after pipeline.toml's
    assert jobs[0]["params"]["loras"][0]["id"] == "spyke_plasma_v1"  # pipeline.toml's [generate] LoRA

    # Feedback 1: the interpreter tries to change the locked subject too.
    ollama_fake.answer({"changes": [{"field": "subject", "value": "1girl on a balcony", "reason": "variety"},
                                    {"field": "background", "value": "empty rooftop at dusk", "reason": "less busy"}],
                        "summary": "a quieter background"})
    resp = await client.post("/concepts/rooftop/rounds/1/feedback", json={
        "picks": [jobs[0]["id"]], "rejects": [{"jobId": jobs[1]["id"], "reason": "busy background"},
                                              {"jobId": jobs[2]["id"]}], "text": "keep it calm"})
    assert resp.status == 200, await resp.text()
    fed = await resp.json()
    assert [(c["field"], c["status"]) for c in fed["changes"]] == [("subject", "refused"), ("background", "applied")]
    assert fed["fields"]["subject"] == {"value": SUBJECT, "locked": True}
    assert fed["fields"]["background"]["value"] == "empty rooftop at dusk" and not fed["messages"]
    assert {p["text"] for p in fed["preferences"]} == {"rejected: busy background", "asked: keep it calm"}
    assert ollama_fake.chats[-1]["format"]["title"] == "FieldChanges"
    assert "[locked: never change]" in ollama_fake.chats[-1]["messages"][1]["content"]
    stored = await (await client.get("/concepts/rooftop")).json()
    assert stored["fields"]["background"]["value"] == "empty rooftop at dusk" and stored["rounds"] == 1
    # A second feedback on the same round, or on a job of no round: refused, nothing changes.
    again = await client.post("/concepts/rooftop/rounds/1/feedback", json={"text": "more"})
    assert (await error_of(again, 409))["code"] == "invalid_state"

    # Rounds 2 and 3: the model answers nothing usable for compose; the fields go in as written.
    for number in (2, 3):
        ollama_fake.answer(compose_answer(("subject", "1girl")))
        resp = await client.post("/concepts/rooftop/rounds", json={})
        assert resp.status == 202, await resp.text()
        started = await resp.json()
        assert started["round"] == number and SUBJECT in started["composed"]["prompt"]
        round_jobs = await settled(client, [j["id"] for j in started["jobs"]])
        assert round_jobs[0]["params"]["width"] == 64  # the concept's render settings
        ollama_fake.answer({"changes": [{"field": "lighting", "value": f"dusk light {number}"},
                                        {"field": "subject", "value": "a cat"}]})
        resp = await client.post(f"/concepts/rooftop/rounds/{number}/feedback", json={
            "picks": [round_jobs[3]["id"]], "rejects": [{"jobId": round_jobs[0]["id"], "reason": "busy background"}]})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["fields"]["subject"]["value"] == SUBJECT
    # The interpreter of round 3 was told what the artist kept rejecting.
    assert "rejected: busy background (x2)" in ollama_fake.chats[-1]["messages"][1]["content"]

    resp = await client.get("/concepts/rooftop/intent")
    assert resp.status == 200
    intent = await resp.json()
    rounds = intent["intent"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["fields"]["subject"] == {"value": SUBJECT, "locked": True} for r in rounds)
    assert all(SUBJECT in r["prompt"] for r in rounds) and rounds[1]["fields"]["background"]["value"] == \
        "empty rooftop at dusk"
    assert intent["preferences"][0] == {"text": "rejected: busy background", "count": 3}
    on_disk = json.loads((project / "concepts" / "rooftop.intent.json").read_text())
    assert len(on_disk["rounds"]) == 3 and on_disk["rounds"][0]["feedback"]["rejects"][0]["reason"] == \
        "busy background"

    # The artist dismisses a preference and adds a note: kept, and what the interpreter reads changes.
    resp = await client.put("/concepts/rooftop/intent", json={"notes": ["warm colours"],
                                                               "dismissed": ["asked: keep it calm"]})
    assert resp.status == 200, await resp.text()
    edited = await resp.json()
    assert [p["text"] for p in edited["preferences"]] == ["rejected: busy background"]
    assert edited["intent"]["notes"] == ["warm colours"] and len(edited["intent"]["rounds"]) == 3

    # The picked image of round 3 becomes page 1 of chapter 2, in one action.
    pick = rounds[2]["feedback"]["picks"][0]
    job = await (await client.get(f"/jobs/{pick}")).json()
    resp = await client.post("/concepts/rooftop/page", json={"chapter": 2, "page": 1, "jobId": pick})
    assert resp.status == 201, await resp.text()
    written = await resp.json()
    assert written["file"] == "prompts/ch-02/ch02_p001.txt"
    page = load_prompt(project / written["file"])
    assert page.text == job["params"]["prompt"] and page.options.seed == job["params"]["seed"]
    assert page.options.checkpoint == job["params"]["checkpoint"]
    assert [(u.id, u.strength) for u in page.options.loras] == [
        (u["id"], u["strength"]) for u in job["params"]["loras"]]
    before = (project / written["file"]).read_text()
    resp = await client.post("/concepts/rooftop/page", json={"chapter": 2, "page": 1, "jobId": pick})
    assert (await error_of(resp, 409))["code"] == "prompt_file_exists"
    assert (project / written["file"]).read_text() == before


async def test_with_ollama_absent_every_step_works_and_says_why(aiohttp_client, backend, tmp_path: Path,
                                                                 project: Path) -> None:
    from sidecar.api.app import create_app

    settings = Settings(data_dir=tmp_path / "data2", engine="embedded", project_root=project,
                        ollama_url="http://127.0.0.1:9", ollama_timeout=2)
    client = await aiohttp_client(create_app(settings, backend))
    assert (await client.post("/concepts", json=CONCEPT)).status == 201
    resp = await client.post("/concepts/rooftop/compose", json={})
    assert resp.status == 200, await resp.text()
    composed = await resp.json()
    assert composed["composer"] == "fields" and "ollama_unavailable" in composed["message"]
    assert composed["prompt"] == ", ".join([TRIGGER, *TRAITS, SUBJECT, "city rooftops at dusk", "water tower",
                                            "quiet", "dusk light"])
    assert {t["source"] for t in composed["tags"]} == {"character", "locked", "fields"}
    resp = await client.post("/concepts/rooftop/rounds", json={})
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    jobs = await settled(client, [j["id"] for j in started["jobs"]])
    resp = await client.post("/concepts/rooftop/rounds/1/feedback", json={
        "picks": [jobs[0]["id"]], "rejects": [{"jobId": jobs[1]["id"], "reason": "too dark"}], "look": True})
    assert resp.status == 200, await resp.text()
    fed = await resp.json()
    assert fed["changes"] == [] and "feedback interpreter is not available" in fed["messages"][0]
    assert fed["preferences"] == [{"text": "rejected: too dark", "count": 1}]
    intent = await (await client.get("/concepts/rooftop/intent")).json()
    assert intent["intent"]["rounds"][0]["feedback"]["interpreter"] is None


async def test_bad_input_is_a_clear_4xx_that_changes_nothing(client, project: Path, tmp_path: Path) -> None:
    assert (await client.post("/concepts", json=CONCEPT)).status == 201
    toml_before = (project / "concepts" / "rooftop.toml").read_text()
    cases = [
        (client.post("/concepts", json=CONCEPT), 409, "concept_exists"),
        (client.post("/concepts", json={**CONCEPT, "name": "../up"}), 400, "invalid_field"),
        (client.post("/concepts", json={**CONCEPT, "name": "x", "colour": 1}), 400, "unknown_field"),
        (client.post("/concepts", json={"name": "x", "fields": {"subject": {"value": "a\nb"}}}), 400, "invalid_field"),
        (client.post("/concepts", data="{}", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (client.get("/concepts/nope"), 404, "concept_not_found"),
        (client.get("/concepts/a.b"), 400, "invalid_field"),
        (client.put("/concepts/rooftop", json={"fields": {"pose": {"value": 3}}}), 400, "invalid_field"),
        (client.post("/concepts/rooftop/rounds/1/feedback", json={"text": "x"}), 404, "round_not_found"),
        (client.post("/concepts/rooftop/rounds/0/feedback", json={"text": "x"}), 400, "invalid_field"),
        (client.post("/concepts/rooftop/page", json={"chapter": 1, "page": 1, "jobId": "nojob"}), 400,
         "invalid_field"),
        (client.post("/concepts/rooftop/rounds", json={"checkpoint": "missing.safetensors"}), 400,
         "checkpoint_not_found"),
    ]
    for call, status, code in cases:
        assert (await error_of(await call, status))["code"] == code, code
    assert (project / "concepts" / "rooftop.toml").read_text() == toml_before
    assert not (project / "concepts" / "rooftop.intent.json").exists()
    assert sorted(p.name for p in (project / "concepts").iterdir()) == ["rooftop.toml"]
    # A concepts folder that is a link out of the project is never read or written through.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.rmtree(project / "concepts")
    (project / "concepts").symlink_to(outside)
    assert (await error_of(await client.post("/concepts", json=CONCEPT), 403))["code"] == "project_path_outside"
    assert (await error_of(await client.get("/concepts"), 403))["code"] == "project_path_outside"
    assert list(outside.iterdir()) == []


async def test_without_a_project_the_routes_say_how_to_give_one(aiohttp_client, backend, tmp_path: Path) -> None:
    from sidecar.api.app import create_app

    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded"), backend))
    for call in (client.get("/concepts"), client.post("/concepts", json=CONCEPT)):
        assert (await error_of(await call, 404))["code"] == "project_not_configured"


async def test_more_like_this_the_vision_analyzer_describes_the_pick_and_the_interpreter_reads_it(
        client, project: Path, ollama_fake: FakeOllama) -> None:
    import base64

    assert (await client.post("/concepts", json=CONCEPT)).status == 201
    ollama_fake.answer(compose_answer(("subject", SUBJECT)))
    resp = await client.post("/concepts/rooftop/rounds", json={"seed": 7})
    assert resp.status == 202, await resp.text()
    jobs = await settled(client, [j["id"] for j in (await resp.json())["jobs"]])
    pick = jobs[2]
    seen = ["low angle, looking up at the figure", "water tower silhouetted against an orange sky"]
    ollama_fake.answer(
        {"observations": seen},  # the vision analyzer, on the picked image
        {"changes": [{"field": "pose", "value": "low angle, looking up", "reason": "the pick's framing"},
                     {"field": "lighting", "value": "orange dusk sky", "reason": "the pick's light"},
                     {"field": "subject", "value": "a water tower", "reason": "the pick shows one"}],
         "summary": "more like the low-angle pick"})
    resp = await client.post("/concepts/rooftop/rounds/1/feedback", json={
        "picks": [pick["id"]], "look": True, "text": "more like this"})
    assert resp.status == 200, await resp.text()
    fed = await resp.json()

    look, asked = ollama_fake.chats[-2], ollama_fake.chats[-1]
    # The vision model was sent the picked job's own image, base64 as the client encodes it.
    assert look["model"] == "llava:7b" and look["format"]["title"] == "ImageNotes"
    image = await (await client.get(f"/jobs/{pick['id']}/image")).read()
    assert base64.b64decode(look["messages"][-1]["images"][0]) == image
    # The interpreter (the prompt model) read the description beside the feedback.
    assert asked["model"] == "llama3.1:8b" and not any(m.get("images") for m in asked["messages"])
    assert "The picked image shows: " + "; ".join(seen) in asked["messages"][1]["content"]
    # Fields changed as the look suggested; the locked subject untouched whatever was proposed.
    assert fed["observations"] == seen and not fed["messages"]
    assert [(c["field"], c["status"]) for c in fed["changes"]] == [
        ("pose", "applied"), ("lighting", "applied"), ("subject", "refused")]
    assert fed["fields"]["subject"] == {"value": SUBJECT, "locked": True}
    stored = tomllib.loads((project / "concepts" / "rooftop.toml").read_text())
    assert stored["pose"]["value"] == "low angle, looking up" and stored["lighting"]["value"] == "orange dusk sky"
    assert stored["subject"] == {"value": SUBJECT, "locked": True}
    # The intent records the look: what the analyzer saw, the pick, and what the interpreter changed.
    intent = (await (await client.get("/concepts/rooftop/intent")).json())["intent"]
    feedback = intent["rounds"][0]["feedback"]
    assert feedback["observations"] == seen and feedback["picks"] == [pick["id"]]
    assert feedback["interpreter"] == "llama3.1:8b" and feedback["summary"] == "more like the low-angle pick"
    assert [(c["field"], c["status"]) for c in feedback["changes"]] == [
        ("pose", "applied"), ("lighting", "applied"), ("subject", "refused")]


async def test_concept_files_edited_by_hand_into_something_hostile_are_clear_4xx_and_hide_nothing(
        client, project: Path) -> None:
    assert (await client.post("/concepts", json=CONCEPT)).status == 201
    assert (await client.post("/concepts", json={"name": "other"})).status == 201
    toml_file, intent_file = project / "concepts" / "rooftop.toml", project / "concepts" / "rooftop.intent.json"
    good = toml_file.read_text()
    hostile = {"nested arrays": "x = " + "[" * 20_000 + "]" * 20_000,  # under the 64 KiB limit
               "nested tables": "x = " + "{a=" * 5_000 + "1" + "}" * 5_000,
               "a render LoRA twice": good + "",  # filled below
               "wrong types": "[subject]\nvalue = 3\n", "unknown keys": "[subject]\nvalue = 'a'\ncolour = 1\n"}
    hostile["a render LoRA twice"] = good.replace("[render]", "[render]\nloras = [{id = 'a'}, {id = 'a'}]")
    for label, text in hostile.items():
        toml_file.write_text(text)
        assert (await error_of(await client.get("/concepts/rooftop"), 400))["code"] == "concept_invalid", label
        rounds = await client.post("/concepts/rooftop/rounds", json={})
        assert (await error_of(rounds, 400))["code"] == "concept_invalid", label
        # The list still shows the other concept, and names this one with why.
        listing = await (await client.get("/concepts")).json()
        assert [c["name"] for c in listing["concepts"]] == ["other"], label
        assert [(u["name"], u["code"]) for u in listing["unreadable"]] == [("rooftop", "concept_invalid")]
        assert toml_file.read_text() == text  # left for the artist to mend
    toml_file.write_text(good)
    for label, text in {"nested": "[" * 200_000 + "]" * 200_000, "malformed": "{\"rounds\": [",
                        "wrong types": '{"rounds": 3}'}.items():
        intent_file.write_text(text)
        for call in (client.get("/concepts/rooftop/intent"), client.put("/concepts/rooftop/intent", json={"notes": []}),
                     client.post("/concepts/rooftop/rounds", json={})):
            assert (await error_of(await call, 400))["code"] == "concept_invalid", label
        assert intent_file.read_text() == text
    assert not any(p.name.endswith(".tmp") for p in (project / "concepts").iterdir())


async def test_a_lora_given_twice_in_a_concepts_stack_is_refused_when_saved(client, project: Path) -> None:
    assert (await client.post("/concepts", json=CONCEPT)).status == 201
    before = (project / "concepts" / "rooftop.toml").read_text()
    twice = {"loras": [{"id": "spyke_plasma_v1"}, {"id": "spyke_plasma_v1", "strength": 0.5}]}
    for call in (client.put("/concepts/rooftop", json={"fields": CONCEPT["fields"], "render": twice}),
                 client.post("/concepts", json={"name": "again", "render": twice}),
                 client.post("/concepts/rooftop/rounds", json=twice)):
        error = await error_of(await call, 400)
        assert error["code"] == "invalid_field" and "twice" in error["message"]
    assert (project / "concepts" / "rooftop.toml").read_text() == before
    assert not (project / "concepts" / "again.toml").exists()
    assert not (project / "concepts" / "rooftop.intent.json").exists()
