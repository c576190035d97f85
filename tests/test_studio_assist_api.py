"""The studio's assistants through the real app (scripted backend, the fake Ollama driven by the real
`ollama` client): a page refined from the Pages view, rendered with its `refinedFrom` and saved as a
version whose log entry records it, its refined prompt written as the page's prompt (front matter kept,
never over an edited file); Ollama's failures change nothing. A training folder's caption proposals
(the tiny WD14 tagger) confirmed as proposed or edited, or rejected: the captions come with the trigger
word first and the flip's `mirrored`, a later proposal run leaves confirmed rows alone, and `sidecar
dataset check` accepts the folder once every proposal is confirmed."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.cli import main
from sidecar.config import Settings
from tests.dataset_fixtures import TRIGGER, snapshot, training_set
from tests.fake_ollama import DIGEST, FakeOllama, Reply, ollama_fake, ollama_server  # noqa: F401
from tests.tiny_tagger import build_tagger

PAGE = "/project/pages/1/1"
ANSWER = {"changes": [
    {"op": "replace", "region": "lighting", "tag": "standing on a rooftop at dusk",
     "replacement": "standing on a rooftop at dawn"},
    {"op": "add", "region": "pose", "tag": "looking left"},
    {"op": "remove", "region": "appearance", "tag": "bracer on right forearm"}],
    "summary": "dawn, looking left"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tagger(root / "taggers" / "tiny-wd14")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), root)
    return root


@pytest.fixture
def settings(tmp_path: Path, project: Path, models: Path, ollama_fake: FakeOllama) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project, models_dir=models,
                    ollama_url=ollama_fake.url, ollama_timeout=5)


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


async def wait_succeeded(client, job_id: str) -> dict:
    for _ in range(500):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


# -- a page refined from the Pages view ---------------------------------------------------------------
async def test_a_page_is_refined_rendered_with_its_provenance_and_written_as_its_prompt(
        client, project: Path, ollama_fake: FakeOllama) -> None:
    prompt_file = project / "prompts" / "ch-01" / "ch01_p001.txt"
    before = prompt_file.read_text()
    ollama_fake.answer(ANSWER)
    resp = await client.post(f"{PAGE}/refine", json={"feedback": "dawn instead of dusk, look left"})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["refined"].startswith("spyke_plasma_v1, 1boy, full body, standing on a rooftop at dawn")
    assert "+ looking left" in answer["diff"] and "- standing on a rooftop at dusk" in answer["diff"]
    assert [c["status"] for c in answer["changes"]] == ["applied", "applied", "refused"]  # a locked trait stays
    assert "bracer on right forearm" in answer["refined"]
    assert answer["character"]["file"] == str(project / "character.toml") and not answer["written"]
    assert answer["refinedFrom"]["modelDigest"] == DIGEST and prompt_file.read_text() == before

    # Render with it, as the page view does: the page's request, the refined prompt, its provenance.
    page = next(p for p in (await (await client.get("/project")).json())["chapters"][0]["pages"] if p["page"] == 1)
    body = {**page["request"], "prompt": answer["refined"], "refinedFrom": answer["refinedFrom"],
            "resolution": {"width": 64, "height": 96}}
    job = await (await client.post("/jobs", json=body)).json()
    await wait_succeeded(client, job["id"])
    saved = await client.post(f"{PAGE}/versions", json={"jobId": job["id"]})
    assert saved.status == 201, await saved.text()
    entry = json.loads((project / "output" / "ch-01" / "generation-log.json").read_text())[-1]
    assert entry["refinedFrom"] == answer["refinedFrom"] and entry["seed"] == 1234  # the front matter's seed

    # Written as the page's prompt: only the text changes, the front matter stays byte for byte.
    resp = await client.put(f"{PAGE}/prompt", json={"prompt": answer["refined"], "expected": answer["original"]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["request"]["prompt"] == answer["refined"]
    head = before[: before.index("+++\n", 4) + 4]
    assert prompt_file.read_text() == head + answer["refined"] + "\n"
    # Not over a text it was not refined from (the artist edited the file meanwhile).
    edited = prompt_file.read_text()
    stale = await client.put(f"{PAGE}/prompt", json={"prompt": "spyke_plasma_v1, x", "expected": answer["original"]})
    assert (await error_of(stale, 409))["code"] == "prompt_file_changed" and prompt_file.read_text() == edited


async def test_a_look_at_a_version_goes_to_the_vision_model_and_bad_input_asks_nothing(
        client, project: Path, ollama_fake: FakeOllama) -> None:
    cases = [(f"{PAGE}/refine", {"feedback": ""}, 400, "invalid_field"),
             (f"{PAGE}/refine", {"feedback": "x", "lookVersion": 1}, 404, "version_not_found"),
             ("/project/pages/1/9/refine", {"feedback": "x"}, 404, "not_found"),
             (f"{PAGE}/prompt", {"prompt": "a", "expected": "b", "write": True}, 400, "unknown_field"),
             (f"{PAGE}/prompt", {"prompt": "a\n+++\nseed = 1", "expected": "b"}, 400, "invalid_field")]
    for path, body, status, code in cases:
        assert (await error_of(await client.post(path, json=body) if path.endswith("refine")
                               else await client.put(path, json=body), status))["code"] == code, body
    assert ollama_fake.chats == []
    raw = project / "output" / "ch-01" / "raw"
    raw.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 96), "orange").save(raw / "ch01_p001_v1.png")
    ollama_fake.answer({"observations": ["he looks at the viewer", "dusk light"]}, ANSWER)
    resp = await client.post(f"{PAGE}/refine", json={"feedback": "look left", "lookVersion": 1})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["observations"] == ["he looks at the viewer", "dusk light"]
    assert answer["refinedFrom"]["lookImage"] == str(raw / "ch01_p001_v1.png")
    assert ollama_fake.chats[0]["model"] == "llava:7b" and ollama_fake.chats[0]["messages"][1]["images"]


@pytest.mark.parametrize(("setup", "status", "code"), [
    ("down", 503, "ollama_unavailable"), ("missing", 503, "ollama_model_missing"), ("500", 502, "ollama_error")])
async def test_a_failing_ollama_changes_nothing_and_queues_nothing(aiohttp_client, backend, settings, project: Path,
                                                                   ollama_fake: FakeOllama, setup: str, status: int,
                                                                   code: str) -> None:
    if setup == "down":  # nothing listens on the discard port
        settings = settings.model_copy(update={"ollama_url": "http://127.0.0.1:9"})
    elif setup == "missing":
        ollama_fake.models.clear()
    else:
        ollama_fake.answer(Reply(status=500))
    client = await aiohttp_client(create_app(settings, backend))
    before = snapshot(project)
    error = await error_of(await client.post(f"{PAGE}/refine", json={"feedback": "look left"}), status)
    assert error["code"] == code and snapshot(project) == before
    if setup == "missing":
        assert error["details"]["fix"] == "ollama pull llama3.1:8b"
    assert (await (await client.get("/jobs")).json())["jobs"] == []


# -- caption proposals in the Dataset view ------------------------------------------------------------
def red_figures(folder: Path, names: list[str]) -> None:
    """Images the tiny tagger reads as full body, standing, simple background."""
    from PIL import Image

    for i, name in enumerate(names):
        img = Image.new("RGB", (512, 512), "white")
        img.paste((255, 0, 0), (128 + 40 * i, 0, 384 - 10 * i, 512))
        img.paste((0, 0, 255 - 40 * i), (0, 400, 60 + 30 * i, 512))  # different enough not to be near-duplicates
        img.save(folder / name)


def table_rows(folder: Path) -> dict[str, dict[str, str]]:
    return {r["file"]: r for r in csv.DictReader((folder / "captions.csv").open(encoding="utf-8"))}


async def test_proposals_are_confirmed_edited_or_rejected_and_check_then_accepts_the_set(
        client, tmp_path: Path, models: Path) -> None:
    folder = tmp_path / "set"
    training_set(folder, 16, captions=False)
    red_figures(folder, ["view_00.png", "view_01.png"])
    (folder / "captions.csv").write_text("file,framing,pose,background,status\n"
                                         "view_03.png,upper body,arms crossed,city street,confirmed\n")
    (folder / "view_03.txt").write_text(f"{TRIGGER}, upper body, arms crossed, city street\n")
    shutil.copyfile(folder / "view_05.png", folder / "view_05_flip.png")  # a flip made earlier
    resp = await client.post("/dataset/captions/propose", json={"dir": str(folder), "proposer": "tagger"})
    assert resp.status == 200, await resp.text()
    table = await resp.json()
    assert table["proposer"] == "tagger tiny-wd14" and table["proposed"] == 15 and table["unlisted"] == []
    rows = {r["file"]: r for r in table["rows"]}
    assert (rows["view_00.png"]["framing"], rows["view_00.png"]["pose"], rows["view_00.png"]["status"]) == \
        ("full body", "standing", "proposed")
    assert rows["view_00.png"]["caption"].startswith(f"{TRIGGER}, full body, standing")
    assert rows["view_03.png"]["status"] == "confirmed" and rows["view_05.png"]["flip"] == "view_05_flip.png"
    assert table_rows(folder)["view_03.png"]["framing"] == "upper body"  # never overwritten

    # Confirmed as proposed (view_00), edited then confirmed (view_05, whose flip follows with `mirrored`).
    resp = await client.post("/dataset/captions/confirm", json={"dir": str(folder), "rows": [
        {"file": "view_00.png", "framing": "full body", "pose": "standing", "background": "simple background"},
        {"file": "view_05.png", "framing": "portrait", "pose": "looking back", "background": "night sky"}]})
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["written"] == ["view_00.txt", "view_05.txt", "view_05_flip.txt"]
    assert (folder / "view_00.txt").read_text() == f"{TRIGGER}, full body, standing, simple background\n"
    assert (folder / "view_05_flip.txt").read_text() == f"{TRIGGER}, portrait, looking back, night sky, mirrored\n"
    assert table_rows(folder)["view_05.png"] == {"file": "view_05.png", "framing": "portrait",
                                                 "pose": "looking back", "background": "night sky",
                                                 "status": "confirmed"}
    # Rejected: the row is emptied for the artist, the image's caption file (none here) untouched.
    resp = await client.post("/dataset/captions/reject", json={"dir": str(folder), "files": ["view_01.png"]})
    assert resp.status == 200, await resp.text()
    assert table_rows(folder)["view_01.png"] == {"file": "view_01.png", "framing": "", "pose": "", "background": "",
                                                 "status": ""}
    again = await client.post("/dataset/captions/reject", json={"dir": str(folder), "files": ["view_00.png"]})
    assert (await error_of(again, 409))["code"] == "invalid_state"  # a confirmed row is not a proposal

    # A later proposal run: the confirmed rows stay exactly as confirmed, the rejected one is proposed again.
    confirmed = {k: v for k, v in table_rows(folder).items() if v["status"] == "confirmed"}
    resp = await client.post("/dataset/captions/propose", json={"dir": str(folder)})  # auto: the tagger
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["proposed"] == 13  # 12 still proposed + the rejected one
    assert {k: v for k, v in table_rows(folder).items() if v["status"] == "confirmed"} == confirmed
    assert table_rows(folder)["view_01.png"]["status"] == "proposed"

    checked = CliRunner().invoke(main, ["dataset", "check", str(folder), "--trigger", TRIGGER],
                                 env={"SIDECAR_CONFIG": str(tmp_path / "none.toml")})
    assert checked.exit_code == 1 and "not confirmed" in checked.output
    # The artist confirms the rest (filling the parts the tagger could not), then check accepts the folder.
    rest = [r for r in (await (await client.get("/dataset/captions", params={"dir": str(folder)})).json())["rows"]
            if r["status"] == "proposed"]
    assert len(rest) == 13
    resp = await client.post("/dataset/captions/confirm", json={"dir": str(folder), "rows": [
        {"file": r["file"], "framing": r["framing"] or "upper body", "pose": r["pose"] or "standing",
         "background": r["background"] or "white background"} for r in rest]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["table"]["proposed"] == 0
    checked = CliRunner().invoke(main, ["dataset", "check", str(folder), "--trigger", TRIGGER],
                                 env={"SIDECAR_CONFIG": str(tmp_path / "none.toml")})
    assert checked.exit_code == 0, checked.output


async def test_a_bad_confirmation_or_a_failing_proposer_writes_nothing(client, tmp_path: Path,
                                                                       ollama_fake: FakeOllama) -> None:
    folder = tmp_path / "set"
    training_set(folder, 3, captions=False)
    shutil.copyfile(folder / "view_00.png", folder / "view_00_flip.png")
    (folder / "captions.csv").write_text("file,framing,pose,background,status\n"
                                         "view_00.png,full body,standing,white,proposed\n")
    before = snapshot(folder)
    good = {"file": "view_00.png", "framing": "full body", "pose": "standing", "background": "white"}
    cases = [({**good, "framing": TRIGGER}, 400, "invalid_field", "rows[1].framing"),
             ({**good, "pose": "mirrored"}, 400, "invalid_field", "rows[1].pose"),
             ({**good, "background": "   "}, 400, "invalid_field", "rows[1].background"),
             ({**good, "file": "view_00_flip.png"}, 400, "dataset_invalid", "rows[1].file"),
             ({**good, "file": "../view_00.png"}, 400, "dataset_invalid", "rows[1].file")]
    for bad, status, code, field in cases:  # the first row is fine: nothing is written for it either
        resp = await client.post("/dataset/captions/confirm", json={"dir": str(folder), "rows": [
            {**good, "file": "view_01.png"}, bad]})
        error = await error_of(resp, status)
        assert (error["code"], error["details"]["field"]) == (code, field), bad
    comma = await client.post("/dataset/captions/confirm", json={"dir": str(folder), "rows": [{**good, "pose": "a, b"}]})
    assert (await error_of(comma, 400))["code"] == "invalid_field"
    assert snapshot(folder) == before
    # The vision model through Ollama: a 500 half way, or a model not pulled, leaves the table as it was.
    ollama_fake.answer({"framing": "full body", "pose": "standing", "background": "white"}, Reply(status=500))
    failed = await client.post("/dataset/captions/propose", json={"dir": str(folder), "proposer": "ollama"})
    assert (await error_of(failed, 502))["code"] == "ollama_error"
    del ollama_fake.models["llava:7b"]
    missing = await client.post("/dataset/captions/propose", json={"dir": str(folder), "proposer": "ollama"})
    assert (await error_of(missing, 503))["details"]["fix"] == "ollama pull llava:7b"
    assert snapshot(folder) == before


async def test_a_row_confirmed_while_the_proposer_runs_is_kept(tmp_path: Path) -> None:
    from sidecar.dataprep.proposals import Proposal, Proposed, propose_table, write_proposals
    from sidecar.dataprep.captions_table import CONFIRMED, Row, write_table

    folder = tmp_path / "set"
    training_set(folder, 3, captions=False)
    table = folder / "captions.csv"

    class Slow:  # the proposer's interface; the artist confirms view_01 in the studio meanwhile
        name = "test"

        async def propose(self, image: Path) -> Proposed:
            if image.name == "view_02.png":
                write_table(table, [Row("view_01.png", "portrait", "sitting", "night sky", CONFIRMED)])
            return Proposed(Proposal(framing="full body", pose="standing", background="white"))

    run = await propose_table(folder, table, TRIGGER, Slow())
    write_proposals(table, run)
    got = table_rows(folder)
    assert got["view_01.png"] == {"file": "view_01.png", "framing": "portrait", "pose": "sitting",
                                  "background": "night sky", "status": "confirmed"}
    assert got["view_00.png"]["status"] == got["view_02.png"]["status"] == "proposed"
