"""Page jobs through the real app (scripted backend): `POST /jobs` with `page` renders the page from its
prompt file and the daemon writes the version itself, as `generate` would (image, workflow, log entry,
all or nothing), answering `pageVersion`; a bad page, a missing prompt file or no project is a clear
4xx; a prompt file changed mid-render still gives one whole, recorded version; `source` filters jobs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend

RAW = Path("output/ch-01/raw")
LOG = Path("output/ch-01/generation-log.json")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example chapter, at a size the scripted backend draws quickly."""
    root = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), root)
    config = root / "pipeline.toml"
    config.write_text(config.read_text().replace("width = 512", "width = 64").replace("height = 768", "height = 96"))
    return root


@pytest.fixture
def settings(tmp_path: Path, project: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project)


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


async def finished(client, job_id: str, timeout: float = 10) -> dict:
    for _ in range(int(timeout / 0.02)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def running(client, job_id: str) -> None:
    for _ in range(500):
        if (await (await client.get(f"/jobs/{job_id}")).json())["status"] == "running":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never ran")


def log_entries(project: Path) -> list[dict]:
    return json.loads((project / LOG).read_text())


async def test_a_page_job_renders_the_prompt_file_and_the_daemon_writes_the_version(client, project) -> None:
    resp = await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}, "source": "studio"})
    assert resp.status == 202, await resp.text()
    job = await finished(client, (await resp.json())["id"])
    assert job["status"] == "succeeded", job
    assert job["pageVersion"] == {"chapter": 1, "page": 1, "version": 1, "file": "output/ch-01/raw/ch01_p001_v1.png"}
    assert job["source"] == "studio" and job["page"]["project"] == str(project)
    # The prompt file's front matter (seed 1234, loraStrength 0.85) over pipeline.toml's defaults.
    assert (job["params"]["seed"], job["params"]["loraStrength"], job["params"]["steps"]) == (1234, 0.85, 20)
    with Image.open(project / RAW / "ch01_p001_v1.png") as image:
        assert image.size == (64, 96) and "Seed: 1234" in image.text["parameters"]
    assert json.loads((project / RAW / "ch01_p001_v1.workflow.json").read_text()) == job["workflow"]
    [entry] = log_entries(project)
    prompt = (project / "prompts/ch-01/ch01_p001.txt").read_text().split("+++")[-1].strip()
    assert entry["promptHash"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert (entry["version"], entry["jobId"], entry["promptFile"], entry["approved"]) == \
        (1, job["id"], "prompts/ch-01/ch01_p001.txt", False)
    assert entry["imageFile"] == "output/ch-01/raw/ch01_p001_v1.png"


async def test_the_request_overrides_the_front_matter_and_two_renders_make_two_versions(client, project,
                                                                                         backend) -> None:
    backend.auto_release = False
    first = await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}, "seed": 5})).json()
    second = await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}, "seed": 6})).json()
    await running(client, first["id"])
    backend.release(first["id"])
    backend.release(second["id"])
    one, two = await finished(client, first["id"]), await finished(client, second["id"])
    assert (one["pageVersion"]["version"], two["pageVersion"]["version"]) == (1, 2)  # in the order they finished
    assert [(e["version"], e["seed"], e["jobId"]) for e in log_entries(project)] == \
        [(1, 5, one["id"]), (2, 6, two["id"])]
    assert sorted(p.name for p in (project / RAW).iterdir() if not p.name.startswith(".")) == [
        "ch01_p001_v1.png", "ch01_p001_v1.workflow.json", "ch01_p001_v2.png", "ch01_p001_v2.workflow.json"]


@pytest.mark.parametrize(("page", "status", "code"), [
    ({"chapter": 0, "page": 1}, 400, "invalid_field"),
    ({"chapter": 1, "page": -3}, 400, "invalid_field"),
    ({"chapter": "1", "page": 1}, 400, "invalid_field"),
    ({"chapter": 1}, 400, "invalid_field"),
    ({"chapter": 1, "page": 1, "pages": 2}, 400, "unknown_field"),
    ({"chapter": 1, "page": 9}, 400, "prompt_file_invalid"),  # no prompts/ch-01/ch01_p009.txt
    ({"chapter": 1, "page": 1, "project": "relative/path"}, 400, "page_project_missing"),
])
async def test_a_bad_page_is_refused_and_queues_nothing(client, project, page, status, code) -> None:
    error = await error_of(await client.post("/jobs", json={"page": page}), status)
    assert error["code"] == code, error
    assert (await (await client.get("/jobs")).json())["jobs"] == []
    assert not (project / "output").exists()


async def test_a_missing_prompt_file_names_it(client, project) -> None:
    error = await error_of(await client.post("/jobs", json={"page": {"chapter": 2, "page": 1}}), 400)
    assert error["code"] == "prompt_file_invalid" and "prompts/ch-02/ch02_p001.txt" in error["message"]
    # With the prompt in the request a page needs no prompt file (the log then names none).
    resp = await client.post("/jobs", json={"page": {"chapter": 2, "page": 1}, "prompt": "a new page",
                                            "resolution": {"width": 64, "height": 96}})
    job = await finished(client, (await resp.json())["id"])
    assert job["pageVersion"]["file"] == "output/ch-02/raw/ch02_p001_v1.png"
    assert json.loads((project / "output/ch-02/generation-log.json").read_text())[0]["promptFile"] is None


async def test_a_page_job_without_a_project_is_a_400_naming_the_setting(aiohttp_client, tmp_path, backend,
                                                                       project) -> None:
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded"), backend))
    error = await error_of(await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}}), 400)
    assert error["code"] == "page_project_missing" and "--project" in error["message"]
    not_one = tmp_path / "not-a-project"
    not_one.mkdir()
    error = await error_of(await client.post("/jobs", json={"page": {"chapter": 1, "page": 1,
                                                                     "project": str(not_one)}}), 400)
    assert error["code"] == "page_project_missing"
    # A client may name the project (generate does: its --root).
    resp = await client.post("/jobs", json={"page": {"chapter": 1, "page": 1, "project": str(project)}})
    assert (await finished(client, (await resp.json())["id"]))["pageVersion"]["version"] == 1


async def test_a_prompt_file_changed_while_rendering_gives_one_whole_version_of_what_was_rendered(
        client, project, backend) -> None:
    backend.auto_release = False
    prompt_file = project / "prompts/ch-01/ch01_p001.txt"
    before = prompt_file.read_text().split("+++")[-1].strip()
    job = await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}})).json()
    await running(client, job["id"])
    prompt_file.write_text("+++\nseed = 1\n+++\nsomething else entirely\n")
    backend.release(job["id"])
    done = await finished(client, job["id"])
    assert done["status"] == "succeeded" and done["pageVersion"]["version"] == 1
    [entry] = log_entries(project)
    assert entry["promptHash"] == hashlib.sha256(before.encode()).hexdigest() and entry["seed"] == 1234
    assert (project / RAW / "ch01_p001_v1.png").is_file() and (project / RAW / "ch01_p001_v1.workflow.json").is_file()


async def test_a_torn_log_fails_the_job_and_nothing_is_written(client, project) -> None:
    (project / LOG).parent.mkdir(parents=True)
    (project / LOG).write_text('[{"imageFile": ')
    job = await finished(client, (await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}})).json())["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "generation_log_invalid" and job["pageVersion"] is None
    assert (project / LOG).read_text() == '[{"imageFile": '
    assert not (project / RAW).exists() or [p.name for p in (project / RAW).iterdir() if p.suffix == ".png"] == []


async def test_a_page_job_whose_raw_folder_leads_out_of_the_project_writes_nothing_there(client, project,
                                                                                         tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / RAW).parent.mkdir(parents=True)
    (project / RAW).symlink_to(elsewhere)
    job = await finished(client, (await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}})).json())["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "project_path_outside" and job["pageVersion"] is None
    assert list(elsewhere.iterdir()) == [] and not (project / LOG).exists()


async def test_jobs_carry_their_source_and_the_list_filters_by_it(client) -> None:
    body = {"prompt": "x", "resolution": {"width": 64, "height": 96}}
    studio = await (await client.post("/jobs", json={**body, "source": "studio"})).json()
    plain = await (await client.post("/jobs", json=body)).json()
    assert (studio["source"], plain["source"]) == ("studio", "api")
    listed = await (await client.get("/jobs?source=studio")).json()
    assert [j["id"] for j in listed["jobs"]] == [studio["id"]]
    assert [j["id"] for j in (await (await client.get("/jobs?source=api")).json())["jobs"]] == [plain["id"]]
    assert (await error_of(await client.get("/jobs?source=Not%20One"), 400))["code"] == "invalid_field"
    assert (await error_of(await client.post("/jobs", json={**body, "source": "BAD!"}), 400))["code"] == \
        "invalid_field"


# -- a chapter without a terminal ---------------------------------------------------------------------
async def test_a_chapter_renders_every_page_without_an_approved_version_as_page_jobs(client, project) -> None:
    # Page 1 rendered and approved first: the chapter render leaves it out and renders page 2 only.
    first = await finished(client, (await (await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}})).json())["id"])
    assert (await client.post("/project/pages/1/1/versions/1/approve")).status == 200
    resp = await client.post("/project/chapters/1/render", json={})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["skipped"] == [{"page": 1, "approvedVersion": 1}]
    assert [(j["page"]["chapter"], j["page"]["page"], j["source"]) for j in body["jobs"]] == [(1, 2, "studio")]
    group = await (await client.get(f"/groups/{body['groupId']}")).json()  # progress page by page
    assert [j["id"] for j in group["jobs"]] == [body["jobs"][0]["id"]]
    done = await finished(client, body["jobs"][0]["id"])
    assert done["pageVersion"]["file"] == "output/ch-01/raw/ch01_p002_v1.png"
    assert (project / "output/ch-01/raw/ch01_p002_v1.png").is_file() and first["pageVersion"]["version"] == 1
    # With every page approved nothing is queued; includeApproved renders them anyway.
    assert (await client.post("/project/pages/1/2/versions/1/approve")).status == 200
    nothing = await (await client.post("/project/chapters/1/render", json={})).json()
    assert nothing["jobs"] == [] and nothing["groupId"] is None and len(nothing["skipped"]) == 2
    again = await (await client.post("/project/chapters/1/render", json={"includeApproved": True, "pages": [2]})).json()
    assert [j["page"]["page"] for j in again["jobs"]] == [2]


async def test_a_chapter_with_a_broken_page_queues_nothing_and_names_it(client, project) -> None:
    (project / "prompts/ch-01/ch01_p002.txt").write_text("+++\nsteps = \"many\"\n+++\nbroken\n")
    error = await error_of(await client.post("/project/chapters/1/render", json={}), 400)
    assert error["code"] == "prompt_file_invalid" and "ch01_p002.txt" in error["message"]
    assert (await (await client.get("/jobs")).json())["jobs"] == []
    assert (await error_of(await client.post("/project/chapters/7/render", json={}), 404))["code"] == "not_found"
    missing = await error_of(await client.post("/project/chapters/1/render", json={"pages": [5]}), 400)
    assert missing["code"] == "prompt_file_invalid"
    assert (await error_of(await client.post("/project/chapters/x/render", json={}), 400))["code"] == "invalid_field"
    assert (await error_of(await client.post("/project/chapters/1/render", json={"pages": "all"}), 400))["code"] == \
        "invalid_field"
