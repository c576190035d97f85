"""The daemon on the embedded engine, over HTTP: real torch on the tiny models (CPU), the app built
by `create_app` exactly as `sidecar serve` builds it (no backend passed: the settings pick the engine)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET, fill

pytestmark = pytest.mark.engine


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, engine_models: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
                        checkpoint=TINY_CHECKPOINT, controlnet_model=TINY_CONTROLNET, steps=4)
    return await aiohttp_client(create_app(settings))


async def submit(client, **body) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **body})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def wait_status(client, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.05)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job.get('status')}")


async def image(client, job_id: str) -> np.ndarray:
    resp = await client.get(f"/jobs/{job_id}/image")
    assert resp.status == 200 and resp.content_type == "image/png"
    with Image.open(io.BytesIO(await resp.read())) as img:
        return np.asarray(img.convert("RGB"))


async def test_health_reports_the_embedded_engine_on_the_cpu(client) -> None:
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["engine"] == "embedded" and health["engineAvailable"] is True
    assert health["comfyui"] is False and health["mps"] is False and health["device"] == "cpu"
    assert health["dtypes"]["unet"] == "fp32" and health["dtypes"]["vae"] == "fp32"


async def test_a_job_produces_a_png_of_the_requested_size_and_same_seed_repeats(client) -> None:
    first = await submit(client, seed=21, loraId="tiny-lora", resolution={"width": 128, "height": 192})
    done = await wait_status(client, first["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert done["engine"] == "embedded" and done["device"] == "cpu" and done["progress"] == {"step": 4, "total": 4}
    pixels = await image(client, first["id"])
    assert pixels.shape == (192, 128, 3)

    again = await submit(client, seed=21, loraId="tiny-lora", resolution={"width": 128, "height": 192})
    other = await submit(client, seed=22, loraId="tiny-lora", resolution={"width": 128, "height": 192})
    for job in (again, other):
        assert (await wait_status(client, job["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    assert np.array_equal(pixels, await image(client, again["id"]))
    assert not np.array_equal(pixels, await image(client, other["id"]))
    loaded = (await (await client.get("/health")).json())["backend"]["loaded"]
    assert loaded["baseLoads"] == 1 and loaded["checkpoint"] == TINY_CHECKPOINT


async def test_a_pose_image_runs_the_controlnet_template(client, pose_png: Path) -> None:
    job = await submit(client, poseImagePath=str(pose_png), controlnetStrength=0.8,
                       resolution={"width": 64, "height": 96})
    assert job["workflowTemplate"] == "txt2img-pose"
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]

    # Reproduce: the stored workflow again, with the image its LoadImage loads: the same pixels.
    resp = await client.post("/jobs", json={"workflow": done["workflow"]})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "invalid_field" and "poseImagePath" in body["error"]["message"]
    resp = await client.post("/jobs", json={"workflow": done["workflow"], "poseImagePath": str(pose_png)})
    assert resp.status == 202, await resp.text()
    again = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"})
    assert again["status"] == "succeeded", again["error"]
    assert again["workflow"] == done["workflow"] and again["params"]["poseImagePath"] == str(pose_png)
    assert (await image(client, again["id"]) == await image(client, done["id"])).all()


async def test_unknown_sampler_and_node_are_400s(client) -> None:
    resp = await client.post("/jobs", json={"prompt": "x", "sampler": "dpmpp_sde"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "sampler_not_supported"
    assert "euler_ancestral" in body["error"]["details"]["supported"]

    wf = fill("txt2img")
    wf["20"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["7", 0], "upscale_method": "lanczos",
                                                          "scale_by": 2.0}}
    resp = await client.post("/jobs", json={"workflow": wf})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "node_not_supported"
    assert body["error"]["details"]["classType"] == "ImageScaleBy"
    jobs = await (await client.get("/jobs")).json()
    assert jobs["jobs"] == []


async def test_second_job_waits_for_the_first_and_health_answers_meanwhile(client) -> None:
    big = await submit(client, seed=1, steps=20, resolution={"width": 512, "height": 768})
    small = await submit(client, seed=2, resolution={"width": 64, "height": 96})
    running = await wait_status(client, big["id"], {"running", "succeeded", "failed"})
    assert running["status"] == "running"
    health = await (await client.get("/health")).json()  # answered while torch renders in its thread
    assert health["runningJob"] == running["id"] and health["queueDepth"] == 1
    assert (await (await client.get(f"/jobs/{small['id']}")).json())["status"] == "queued"
    first = await wait_status(client, big["id"], {"succeeded", "failed"})
    second = await wait_status(client, small["id"], {"succeeded", "failed"})
    assert first["status"] == second["status"] == "succeeded"
    assert second["startedAt"] >= first["finishedAt"]
    assert (await image(client, big["id"])).shape == (768, 512, 3)


async def test_cancel_stops_a_running_job(client) -> None:
    job = await submit(client, steps=150, resolution={"width": 256, "height": 384})
    for _ in range(2400):
        state = await (await client.get(f"/jobs/{job['id']}")).json()
        if state["progress"]["step"] >= 1:
            break
        await asyncio.sleep(0.05)
    resp = await client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status in (200, 202)
    done = await wait_status(client, job["id"], {"cancelled", "succeeded", "failed"})
    assert done["status"] == "cancelled" and done["progress"]["step"] < 150
    assert (await client.get(f"/jobs/{job['id']}/image")).status != 200


async def test_an_unavailable_device_is_reported_and_fails_jobs_with_the_reason(aiohttp_client, tmp_path: Path,
                                                                                engine_models: Path) -> None:
    import torch

    missing = "mps" if not torch.backends.mps.is_available() else "cuda"
    if missing == "cuda" and torch.cuda.is_available():
        pytest.skip("both GPU kinds are available here")
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device=missing, models_dir=engine_models,
                        checkpoint=TINY_CHECKPOINT)
    client = await aiohttp_client(create_app(settings))
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["engineAvailable"] is False
    assert any(missing in w for w in health["warnings"])
    job = await submit(client, resolution={"width": 64, "height": 96})
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "engine_unavailable"
    assert missing in done["error"]["message"]
