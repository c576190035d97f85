"""Samples while training: the embedded trainer renders the run's sample prompts at every save with the
LoRA as it stands (tiny random SD 1.5 model, CPU), named as kohya names its samples (without the time); the
run's checkpoints list the samples of their step, each served at its URL."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.engine.tiny import CHECKPOINT
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import dataset_dir, wait_run  # noqa: F401  (fixtures)

BODY = {"outputName": "spyke", "engine": "embedded", "steps": 4, "saveEveryNSteps": 2, "resolution": 64,
        "networkDim": 4, "networkAlpha": 2, "learningRate": 0.05, "seed": 5, "checkpoint": CHECKPOINT,
        "force": True}


@pytest.mark.engine
async def test_the_embedded_trainer_renders_its_sample_prompts_at_every_save(
        aiohttp_client, tmp_path: Path, engine_models: Path, dataset_dir) -> None:
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    s = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models, checkpoint=CHECKPOINT)
    client = await aiohttp_client(create_app(s, ScriptedBackend()))
    prompts = ["spyke_plasma_v1, portrait", "spyke_plasma_v1, full body"]
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), **BODY, "samplePrompts": prompts})
    assert resp.status == 202, await resp.text()
    done = await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error"]
    by_step = {c["step"]: c for c in done["checkpoints"] if not c["final"]}
    assert sorted(by_step) == [2, 4]
    for step, ckpt in by_step.items():
        assert ckpt["samples"] == [f"spyke_{step:06d}_00_5.png", f"spyke_{step:06d}_01_6.png"]
    pixels = {}
    for step in (2, 4):
        got = await client.get(f"/loras/{done['id']}/samples/{by_step[step]['samples'][0]}")
        assert got.status == 200 and got.content_type == "image/png"
        image = Image.open(io.BytesIO(await got.read()))
        assert image.size == (64, 64)
        pixels[step] = np.asarray(image.convert("RGB"), dtype=np.int16)
    # The same prompt and seed at two steps: what changed is the LoRA.
    assert np.abs(pixels[2] - pixels[4]).mean() > 0.5
    assert (await client.get(f"/loras/{done['id']}/samples/nope.png")).status == 404
