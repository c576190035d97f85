"""`POST /dataset/build`: a training folder from a reference sheet through the daemon, as the very
`sidecar dataset` commands a terminal runs (crop, captions, flips, a regularisation set rendered through
this daemon), followed with GET /tasks/{id}; bad input is a 400 that changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.dataset_fixtures import reference_sheet


@pytest.fixture
def sheet(tmp_path: Path) -> Path:
    path = tmp_path / "Spyke_Final.png"
    reference_sheet(path)
    return path


async def wait_task(client, task_id: str, timeout: float = 180) -> dict:
    for _ in range(int(timeout / 0.2)):
        task = await (await client.get(f"/tasks/{task_id}")).json()
        if task["status"] != "running":
            return task
        await asyncio.sleep(0.2)
    raise AssertionError(task)


async def test_a_training_folder_is_built_from_a_sheet_with_flips_a_caption_table_and_a_reg_set(
        client, sheet, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))  # the children's configuration: none of the user's
    out = tmp_path / "set"
    resp = await client.post("/dataset/build", json={
        "sheets": [str(sheet)], "out": str(out), "size": 128, "captions": "table", "trigger": "spyke_plasma_v1",
        "reg": {"count": 2, "prompt": "anime character, full body", "width": 64, "height": 64}})
    assert resp.status == 202, await resp.text()
    task = await resp.json()
    assert [c.split(" ")[1:3] for c in task["commands"]] == [
        ["dataset", "crop"], ["dataset", "crop"], ["dataset", "caption"], ["dataset", "flip"], ["dataset", "reg"]]
    done = await wait_task(client, task["id"])
    assert (done["status"], done["exitCode"]) == ("succeeded", 0), done["output"]
    crops = sorted(p.name for p in out.glob("*.png") if not p.stem.endswith("_flip"))
    flips = sorted(p.name for p in out.glob("*_flip.png"))
    assert crops and flips == [f"{Path(c).stem}_flip.png" for c in crops]
    assert (out / "captions.csv").is_file() and (out / "regions" / "spyke_final.regions.toml").is_file()
    assert sorted(p.name for p in (tmp_path / "set-reg").glob("*.png")) == ["reg_0001.png", "reg_0002.png"]
    rendered = await (await client.get("/jobs?source=dataset")).json()
    assert len(rendered["jobs"]) == 2  # the reg set went through this daemon
    listed = await (await client.get("/tasks?kind=dataset")).json()
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]


@pytest.mark.parametrize(("body", "code"), [
    ({"sheets": ["relative.png"], "out": "/tmp/x"}, "dataset_invalid"),
    ({"sheets": [], "out": "/tmp/x"}, "invalid_field"),
    ({"sheets": ["/nowhere/sheet.png"], "out": "/tmp/x"}, "dataset_invalid"),
    ({"sheets": ["SHEET"], "out": "NONEMPTY"}, "dataset_invalid"),
    ({"sheets": ["SHEET"], "out": "OUT", "fit": "stretch"}, "invalid_field"),
    ({"sheets": ["SHEET"], "out": "OUT", "colour": "red"}, "unknown_field"),
])
async def test_bad_input_is_a_400_and_starts_nothing(client, sheet, tmp_path, body, code) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    swap = {"SHEET": str(sheet), "NONEMPTY": str(full), "OUT": str(tmp_path / "new")}
    body = {k: ([swap.get(s, s) for s in v] if isinstance(v, list) else swap.get(v, v)) for k, v in body.items()}
    resp = await client.post("/dataset/build", json=body)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == code, await resp.text()
    assert (await (await client.get("/tasks")).json())["tasks"] == []
    assert not (tmp_path / "new").exists() and [p.name for p in full.iterdir()] == ["keep.txt"]
