"""`sidecar loras publish` / POST /loras/{id}/publish: a bundle with the LoRA, metadata.json, a model card,
the samples of the step, the exact training config and the dataset manifest (images only on request),
under the project's dist/; the same run gives the same bytes, folder and zip, every time; an installed
LoRA is traced back to the run that trained it; a swept run publishes the sweep's pick at its strength."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.engine.tiny import CHECKPOINT
from sidecar.loras.cli import loras
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import TRIGGER, dataset_dir, wait_run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.engine
BODY = {"outputName": "spyke", "engine": "embedded", "steps": 4, "saveEveryNSteps": 2, "resolution": 64,
        "networkDim": 4, "networkAlpha": 2, "learningRate": 0.05, "seed": 5, "checkpoint": CHECKPOINT,
        "preset": "character", "force": True, "samplePrompts": [f"{TRIGGER}, portrait"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
async def trained(aiohttp_client, tmp_path: Path, engine_models: Path, dataset_dir):
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    s = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models, checkpoint=CHECKPOINT)
    client = await aiohttp_client(create_app(s, ScriptedBackend()))
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), **BODY})
    assert resp.status == 202, await resp.text()
    done = await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error"]
    return client, s, done


async def test_the_bundle_has_everything_and_is_the_same_bytes_every_time(trained, tmp_path: Path) -> None:
    client, settings, run = trained
    root = tmp_path / "project"
    resp = await client.post(f"/loras/{run['id']}/publish", json={"root": str(root)})
    assert resp.status == 201, await resp.text()
    done = await resp.json()
    folder, zipped = root / "dist" / "spyke", root / "dist" / "spyke.zip"
    assert done["folder"] == str(folder) and done["zip"] == str(zipped) and done["step"] == 4
    assert done["files"] == ["README.md", "dataset/manifest.json", "metadata.json", "samples/spyke_000004_00_5.png",
                             "spyke.safetensors", "training/config.json"]
    assert sha(folder / "spyke.safetensors") == sha(Path(run["finalFile"]))
    meta = json.loads((folder / "metadata.json").read_text())
    base = settings.models_path / "checkpoints" / CHECKPOINT
    assert meta["trigger"] == TRIGGER and meta["baseModel"] == {"file": CHECKPOINT, "sha256": sha(base)}
    assert (meta["family"], meta["trainer"], meta["steps"], meta["step"], meta["preset"], meta["force"]) == (
        "sd15", "embedded", 4, 4, "character", True)
    assert meta["likeness"] is None and meta["recommendedStrength"] == settings.lora_strength
    assert meta["samples"] == [{"file": "samples/spyke_000004_00_5.png", "prompt": f"{TRIGGER}, portrait"}]
    card = (folder / "README.md").read_text()
    assert f"`{TRIGGER}`" in card and f"<lora:spyke:{settings.lora_strength:g}>" in card
    assert "ComfyUI/models/loras/" in card and "![spyke_plasma_v1, portrait](samples/spyke_000004_00_5.png)" in card
    config = json.loads((folder / "training" / "config.json").read_text())
    assert config["params"] == run["params"] and config["spec"]["seed"] == 5
    manifest = json.loads((folder / "dataset" / "manifest.json").read_text())["images"]
    assert [m["file"] for m in manifest] == ["img00.png", "img01.png", "img02.png"]
    assert manifest[0]["caption"].startswith(TRIGGER) and len(manifest[0]["sha256"]) == 64
    with zipfile.ZipFile(zipped) as z:
        assert z.namelist() == [f"spyke/{f}" for f in done["files"]]
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert z.read("spyke/metadata.json") == (folder / "metadata.json").read_bytes()
    first = snapshot(folder), sha(zipped)
    await asyncio.sleep(1.1)  # a clock in the bundle would show now
    again = await client.post(f"/loras/{run['id']}/publish", json={"root": str(root)})
    assert again.status == 201 and (snapshot(folder), sha(zipped)) == first
    # The command, by output name, from the project folder: the same bundle.
    url = str(client.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, loras, ["publish", "spyke", "--root", str(root), "--url", url],
                                     env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "published step 4" in result.output and (snapshot(folder), sha(zipped)) == first


async def test_with_the_dataset_an_installed_lora_and_a_swept_run(trained, tmp_path: Path) -> None:
    client, settings, run = trained
    root = tmp_path / "project"
    resp = await client.post(f"/loras/{run['id']}/publish", json={"root": str(root), "withDataset": True})
    files = (await resp.json())["files"]
    assert {"dataset/images/img00.png", "dataset/images/img00.txt"} <= set(files)
    # An installed LoRA (promoted from step 2) is published as that run's step 2.
    promoted = await (await client.post(f"/loras/{run['id']}/promote", json={"step": 2, "name": "spyke_s2"})).json()
    resp = await client.post(f"/loras/{promoted['loraId']}/publish", json={"root": str(root), "name": "spyke_s2"})
    assert resp.status == 201, await resp.text()
    done = await resp.json()
    assert done["runId"] == run["id"] and done["step"] == 2 and "samples/spyke_000002_00_5.png" in done["files"]
    # A sweep's pick (index.json as `sidecar loras sweep` writes it) is the default step, at its strength.
    sweep = Path(run["outputDir"]).parent / "sweep"
    sweep.mkdir()
    (sweep / "index.json").write_text(json.dumps({
        "strength": 0.7, "pick": {"step": 2, "label": "step 2", "meanScore": 0.91, "shareSame": 1.0},
        "ranking": [{"rank": 1, "step": 2, "label": "step 2", "meanScore": 0.91, "shareSame": 1.0}]}))
    done = await (await client.post(f"/loras/{run['id']}/publish", json={"root": str(root)})).json()
    meta = json.loads((root / "dist" / "spyke" / "metadata.json").read_text())
    assert done["step"] == 2 and done["recommendedStrength"] == 0.7
    assert meta["likeness"]["meanScore"] == 0.91 and meta["likeness"]["rank"] == 1
    assert "<lora:spyke:0.7>" in (root / "dist" / "spyke" / "README.md").read_text()
    # Refusals: no such run or LoRA; nowhere to write.
    assert (await client.post("/loras/nope/publish", json={"root": str(root)})).status == 404
    nowhere = await client.post(f"/loras/{run['id']}/publish", json={})
    assert nowhere.status == 400 and (await nowhere.json())["error"]["details"]["field"] == "root"
