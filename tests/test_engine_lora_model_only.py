"""A user's whole workflow with ComfyUI's `LoraLoaderModelOnly` runs on the embedded engine (SD 1.5 and
SDXL): each LoRA's UNet weights only, chained, posted through POST /jobs as the workflow itself."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.conftest_engine import TINY_CHECKPOINT, TINY_LORA, TINY_SDXL, TINY_SDXL_LORA, TINY_SDXL_LORA_B

pytestmark = pytest.mark.engine

TINY_LORA_B = "tiny-lora-b.safetensors"


def workflow(checkpoint: str, loras: list[tuple[str, float, float | None]]) -> dict:
    """Checkpoint -> a chain of LoRA loaders (strength_clip None: LoraLoaderModelOnly) -> KSampler, 64x96."""
    wf: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    model, clip = ["1", 0], ["1", 1]
    for n, (name, sm, sc) in enumerate(loras, start=20):
        if sc is None:
            wf[str(n)] = {"class_type": "LoraLoaderModelOnly",
                          "inputs": {"model": model, "lora_name": name, "strength_model": sm}}
        else:
            wf[str(n)] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": name,
                                                                "strength_model": sm, "strength_clip": sc}}
            clip = [str(n), 1]
        model = [str(n), 0]
    wf.update({
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "spyke_plasma_v1, standing"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "lowres"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 5, "steps": 3, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "mine"}},
    })
    return wf


async def render(client, wf: dict) -> str:
    resp = await client.post("/jobs", json={"workflow": wf})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    for _ in range(2400):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job.get("error")
    with Image.open(io.BytesIO(await (await client.get(f"/jobs/{job_id}/image")).read())) as img:
        return hashlib.sha256(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sd15_with_two_loras(tmp_path_factory: pytest.TempPathFactory, engine_models: Path) -> Path:
    """The tiny SD 1.5 set and a second LoRA (the first's up weights, rows reversed)."""
    models = tmp_path_factory.mktemp("sd15-two-loras") / "models"
    shutil.copytree(engine_models, models)
    with safe_open(str(models / "loras" / TINY_LORA), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).flip(0) if k.endswith(".lora_up.weight") else f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(models / "loras" / TINY_LORA_B), metadata=meta)
    return models


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
async def test_a_chain_of_lora_loader_model_only_applies_the_unet_weights_only(
        aiohttp_client, tmp_path: Path, family: str, request: pytest.FixtureRequest) -> None:
    if family == "sd15":
        models, checkpoint, a, b, profile = (request.getfixturevalue("sd15_with_two_loras"), TINY_CHECKPOINT,
                                             TINY_LORA, TINY_LORA_B, "m1pro-16gb")
    else:
        models, checkpoint, a, b, profile = (request.getfixturevalue("sdxl_models"), TINY_SDXL, TINY_SDXL_LORA,
                                             TINY_SDXL_LORA_B, "m1max-32gb")
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models,
                        checkpoint=checkpoint, profile=profile, preview_interval=0.0)
    client = await aiohttp_client(create_app(settings))

    plain = await render(client, workflow(checkpoint, []))
    model_only = await render(client, workflow(checkpoint, [(a, 1.0, None), (b, 0.7, None)]))
    # The same as LoraLoader with its clip strength at 0: the text encoders are left as they were ...
    clip_off = await render(client, workflow(checkpoint, [(a, 1.0, 0.0), (b, 0.7, 0.0)]))
    # ... and not as a LoraLoader that also patches them.
    with_clip = await render(client, workflow(checkpoint, [(a, 1.0, 1.0), (b, 0.7, 0.7)]))
    first_only = await render(client, workflow(checkpoint, [(a, 1.0, None)]))
    assert model_only == clip_off
    assert len({plain, model_only, with_clip, first_only}) == 4  # each LoRA of the chain counts
    loaded = (await (await client.get("/health")).json())["backend"]["loaded"]
    assert loaded["checkpoint"] == checkpoint and loaded["baseLoads"] == 1
