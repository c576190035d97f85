"""POST /likeness/score and `likeness` on a succeeded job's answer, through the real app (scripted backend,
the tiny likeness model, a project with a reference set): what a client sees with and without references
and weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.likeness_fixtures import BLUE, figure, tiny_likeness_models, write_project
from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.test_api_jobs import wait_status


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_project(tmp_path / "project")
    return tmp_path / "project"


@pytest.fixture
def settings(tmp_path: Path, project: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project,
                    models_dir=tiny_likeness_models(tmp_path / "models"), likeness_model="ccip-tiny")


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


async def test_score_answers_each_image_in_the_order_asked(client, project: Path, settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stranger = settings.data_dir / "stranger.png"
    figure(BLUE, seed=4).save(stranger)
    copy = project / "copy-of-ref.png"
    shutil.copy(project / "refs" / "ref1.png", copy)
    resp = await client.post("/likeness/score", json={"images": [str(copy), str(stranger)]})
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["results"]
    assert [r["image"] for r in results] == [str(copy), str(stranger)]
    assert results[0]["likeness"]["verdict"] == "same" and results[1]["likeness"]["verdict"] == "different"
    assert set(results[0]["likeness"]) == {"score", "verdict", "scorer", "weights"}
    assert results[0]["likeness"]["scorer"] == "ccip-tiny"


async def test_images_outside_the_project_and_data_dir_are_refused(client, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    figure(seed=1).save(outside)
    err = await error_of(await client.post("/likeness/score", json={"images": [str(outside)]}), 400)
    assert err["code"] == "invalid_field" and err["details"]["field"] == "images"
    err = await error_of(await client.post("/likeness/score", json={"images": ["relative.png"]}), 400)
    assert err["code"] == "invalid_field"
    err = await error_of(await client.post("/likeness/score", json={}), 400)
    assert err["code"] == "invalid_field"


async def test_a_succeeded_job_answers_its_likeness_and_can_be_scored_by_id(client) -> None:
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "seed": 3})).json()
    await wait_status(client, job["id"], {"succeeded"})
    answer = await (await client.get(f"/jobs/{job['id']}")).json()
    assert answer["likeness"]["verdict"] in ("same", "unsure", "different")
    resp = await client.post("/likeness/score", json={"jobIds": [job["id"]]})
    assert resp.status == 200, await resp.text()
    (result,) = (await resp.json())["results"]
    assert result["jobId"] == job["id"] and result["likeness"] == answer["likeness"]


async def test_a_groups_jobs_answer_their_likeness(client) -> None:
    group = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "seed": 1, "variations": 2})).json()
    for job in group["jobs"]:
        await wait_status(client, job["id"], {"succeeded"})
    answer = await (await client.get(f"/groups/{group['groupId']}")).json()
    assert all(j["likeness"]["scorer"] == "ccip-tiny" for j in answer["jobs"])


async def test_an_unfinished_or_unknown_job_is_refused(client) -> None:
    err = await error_of(await client.post("/likeness/score", json={"jobIds": ["nope"]}), 404)
    assert err["code"] == "job_not_found"


@pytest.mark.parametrize("missing", ["weights", "references"])
async def test_without_weights_or_references_score_says_why_and_jobs_answer_without(
        aiohttp_client, backend, tmp_path: Path, project: Path, missing: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", engine="embedded",
                        project_root=project if missing == "weights" else None,
                        models_dir=tmp_path / "empty" if missing == "weights" else tiny_likeness_models(tmp_path / "m"),
                        likeness_model="ccip-tiny")
    client = await aiohttp_client(create_app(settings, backend))
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "seed": 2})).json()
    await wait_status(client, job["id"], {"succeeded"})
    assert (await (await client.get(f"/jobs/{job['id']}")).json())["likeness"] is None
    resp = await client.post("/likeness/score", json={"jobIds": [job["id"]]})
    if missing == "weights":
        err = await error_of(resp, 503)
        assert err["code"] == "likeness_unavailable" and "sidecar models fetch ccip" in err["details"]["fix"]
    else:
        err = await error_of(resp, 409)
        assert err["code"] == "references_missing"


async def test_the_operation_is_documented_with_its_errors(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    op = doc["paths"]["/likeness/score"]["post"]
    text = str(op["responses"])
    assert "likeness_unavailable" in text and "references_missing" in text


async def test_a_job_published_as_a_page_version_logs_its_likeness(client, project: Path) -> None:
    import json

    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "seed": 5})).json()
    await wait_status(client, job["id"], {"succeeded"})
    done = await client.post("/project/pages/1/1/versions", json={"jobId": job["id"]})
    assert done.status == 201, await done.text()
    (entry,) = json.loads((project / "output" / "ch-01" / "generation-log.json").read_text())
    assert entry["likeness"]["scorer"] == "ccip-tiny" and entry["likeness"]["verdict"] in ("same", "unsure", "different")


async def test_the_studios_dataset_view_flags_a_stranger_in_the_training_set(client, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(3):
        figure(seed=20 + i, size=(512, 512)).save(folder / f"her{i}.png")
    figure(BLUE, seed=9, size=(512, 512)).save(folder / "stranger.png")
    resp = await client.get("/dataset", params={"dir": str(folder)})
    assert resp.status == 200, await resp.text()
    findings = [f for f in (await resp.json())["findings"] if f["check"] == "likeness"]
    assert [(f["file"], f["level"]) for f in findings] == [("stranger.png", "error")]


def test_likeness_score_command_prints_each_image_with_its_verdict(tmp_path: Path, project: Path) -> None:
    from click.testing import CliRunner

    from sidecar.cli import main

    models = tiny_likeness_models(tmp_path / "cli-models")
    figure(BLUE, seed=1).save(tmp_path / "stranger.png")
    result = CliRunner().invoke(main, ["likeness", "score", str(project / "refs" / "ref0.png"), str(tmp_path / "stranger.png"),
                                       "--project", str(project), "--models-dir", str(models)],
                                env={"SIDECAR_LIKENESS_MODEL": "ccip-tiny"})
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert "same" in first and first.endswith("ref0.png")
    assert "different" in second and second.endswith("stranger.png")
