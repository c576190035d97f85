"""The `/project` routes stay inside the project: a log entry's path, a symlinked image in `raw/` and a
symlinked `raw/` folder are refused (`project_path_outside`), never served or written through; path
segments take ASCII digits only."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from sidecar.config import Settings
from tests.test_studio_api import AUTH, TOKEN, error_of, project  # noqa: F401  (the example project fixture)


@pytest.fixture
def settings(tmp_path: Path, project: Path) -> Settings:  # noqa: F811
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project, token=TOKEN)


def log_of(project: Path) -> Path:
    return project / "output" / "ch-01" / "generation-log.json"


async def test_a_log_entry_s_workflow_outside_the_project_is_not_served(client, project, tmp_path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"password": "hunter2"}))
    entries = json.loads(log_of(project).read_text())
    entries[0]["workflowFile"] = os.path.relpath(secret, project)  # ../secret.json
    entries[1]["workflowFile"] = str(secret)  # absolute
    log_of(project).write_text(json.dumps(entries))
    view = await (await client.get("/project", headers=AUTH)).json()
    versions = view["chapters"][0]["pages"][0]["versions"]
    assert [v["workflowUrl"] for v in versions] == [None, None]
    for version in (1, 2):
        resp = await client.get(f"/project/pages/1/1/versions/{version}/workflow", headers=AUTH)
        error = await error_of(resp, 403)
        assert error["code"] == "project_path_outside" and "hunter2" not in json.dumps(error)


async def test_a_png_in_raw_linked_out_of_the_project_is_not_served(client, project, tmp_path) -> None:
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    raw = project / "output" / "ch-01" / "raw"
    (raw / "ch01_p001_v2.png").unlink()
    (raw / "ch01_p001_v2.png").symlink_to(outside)  # in the log
    (raw / "ch01_p002_v1.png").symlink_to(outside)  # not in the log
    for url in ("/project/pages/1/1/versions/2/image", "/project/pages/1/2/versions/1/image"):
        resp = await client.get(url, headers=AUTH)
        assert resp.status in (403, 404)
        assert "root:x" not in await resp.text()
    assert (await error_of(await client.get("/project/pages/1/1/versions/2/image", headers=AUTH), 403))["code"] == \
        "project_path_outside"
    view = await (await client.get("/project", headers=AUTH)).json()
    pages = {p["name"]: p for p in view["chapters"][0]["pages"]}
    assert [v["imageExists"] for v in pages["ch01_p001"]["versions"]] == [True, False]
    assert pages["ch01_p002"]["versions"] == []  # the link is no version
    # A link inside the project is the project's own file and stays served.
    (raw / "ch01_p001_v2.png").unlink()
    (raw / "ch01_p001_v2.png").symlink_to(raw / "ch01_p001_v1.png")
    assert (await client.get("/project/pages/1/1/versions/2/image", headers=AUTH)).status == 200


async def succeeded_job(client) -> str:
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "seed": 5,
                                                  "resolution": {"width": 64, "height": 96}}, headers=AUTH)).json()
    for _ in range(200):
        if (await (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json())["status"] == "succeeded":
            return job["id"]
        await asyncio.sleep(0.02)
    raise AssertionError("the job did not finish")


async def test_publishing_into_a_raw_folder_linked_out_of_the_project_writes_nothing(client, project, tmp_path) -> None:
    job_id = await succeeded_job(client)
    elsewhere = tmp_path / "elsewhere"
    raw = project / "output" / "ch-01" / "raw"
    raw.rename(elsewhere)
    raw.symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    log_before = log_of(project).read_bytes()
    resp = await client.post("/project/pages/1/1/versions", json={"jobId": job_id}, headers=AUTH)
    assert (await error_of(resp, 403))["code"] == "project_path_outside"
    assert sorted(p.name for p in elsewhere.iterdir()) == before and log_of(project).read_bytes() == log_before
    # Approving writes the log: a log linked out of the project is refused too, and left as it was.
    raw.unlink()
    elsewhere.rename(raw)
    outside_log = tmp_path / "other-log.json"
    outside_log.write_bytes(log_before)
    log_of(project).unlink()
    log_of(project).symlink_to(outside_log)
    resp = await client.post("/project/pages/1/1/versions/1/approve", headers=AUTH)
    assert (await error_of(resp, 403))["code"] == "project_path_outside"
    assert outside_log.read_bytes() == log_before


@pytest.mark.parametrize("segment", ["\u00b2", "1\u00b2", "\u0663", "\uff11"])
async def test_a_page_segment_takes_ascii_digits_only(client, segment) -> None:
    for url in (f"/project/pages/{segment}/1/versions/1/image", f"/project/pages/1/{segment}/versions/1/workflow",
                f"/project/pages/1/1/versions/{segment}/image"):
        assert (await error_of(await client.get(url, headers=AUTH), 400))["code"] == "invalid_field"
    resp = await client.post(f"/project/pages/1/1/versions/{segment}/approve", headers=AUTH)
    assert (await error_of(resp, 400))["code"] == "invalid_field"
