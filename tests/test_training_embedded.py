"""The embedded trainer for real (torch on CPU) on the engine's tiny random SD1.5 model set (`sidecar
models make-tiny`: a single-file checkpoint, as a real one): through the API it writes kohya-format checkpoints and a final LoRA that
the embedded engine and diffusers' kohya loader both load, and that changes what they draw; NaN loss
stops it; a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sidecar.api.app import create_app
from sidecar.api.keys import EVENTS
from sidecar.config import Settings
from sidecar.engine.tiny import CHECKPOINT
from sidecar.errors import JobFailed
from sidecar.training.dataset import load_dataset
from sidecar.training.embedded import EmbeddedTrainer, load_components
from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import TRIGGER, dataset_dir, make_dataset, wait_run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.engine
KEY = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(alpha|lora_down\.weight|lora_up\.weight)$")
BODY = {"outputName": "spyke", "engine": "embedded", "steps": 4, "saveEveryNSteps": 2, "resolution": 64,
        "networkDim": 4, "networkAlpha": 2, "learningRate": 0.05, "seed": 5, "checkpoint": CHECKPOINT}


@pytest.fixture
def settings(tmp_path: Path, engine_models: Path) -> Settings:
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)  # each test installs LoRAs of its own
    return Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models,
                    checkpoint=CHECKPOINT)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings, ScriptedBackend()))


def tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


async def test_embedded_training_writes_kohya_checkpoints_and_final_lora(client, dataset_dir) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, **BODY})
    assert resp.status == 202, await resp.text()
    run = await resp.json()
    done = await wait_run(client, run["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert (done["step"], done["total"]) == (4, 4) and done["loss"]["last"] > 0
    assert done["device"] == "cpu" and any("runs on the CPU" in w for w in done["warnings"])
    assert [(c["step"], c["fileName"]) for c in done["checkpoints"]] == [
        (2, "spyke-step00000002.safetensors"), (4, "spyke-step00000004.safetensors")]
    final = Path(done["finalFile"])
    assert final.name == "spyke.safetensors"
    weights, meta = tensors(final)
    assert all(KEY.match(k) for k in weights), [k for k in weights if not KEY.match(k)][:3]
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    unet = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert weights[f"{te}.lora_down.weight"].shape == (4, 32) and weights[f"{unet}.lora_up.weight"].shape[1] == 4
    assert float(weights[f"{unet}.alpha"]) == 2.0 and weights[f"{unet}.lora_down.weight"].dtype == torch.float16
    assert any(k.endswith("attn2_to_k.lora_down.weight") for k in weights)  # cross-attention too
    # The layers kohya's networks.lora adapts: 12 per U-Net transformer, 6 per CLIP layer (real kohya SD1.5
    # LoRA: 192 + 72 modules); proj_in/out are 1x1 convolutions there.
    unet_kinds: dict[str, set[str]] = {}
    for k in weights:
        if m := re.match(r"lora_unet_(.+_attentions_\d+)_(.+)\.alpha$", k):
            unet_kinds.setdefault(m.group(1), set()).add(m.group(2))
    block = {"proj_in", "proj_out", "transformer_blocks_0_ff_net_0_proj", "transformer_blocks_0_ff_net_2",
             *(f"transformer_blocks_0_{a}_{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out_0"))}
    assert unet_kinds and all(kinds == block for kinds in unet_kinds.values()), unet_kinds
    assert weights[f"{unet.rsplit('_transformer', 1)[0]}_proj_in.lora_down.weight"].ndim == 4
    te_kinds = {k.split(".")[0].split("_layers_0_")[1] for k in weights if "_encoder_layers_0_" in k}
    assert te_kinds == {"self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                        "mlp_fc1", "mlp_fc2"}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "2.0", "sd_v1")
    assert meta["ss_steps"] == "4" and meta["ss_network_module"] == "networks.lora"
    assert meta["modelspec.trigger_phrase"] == TRIGGER and meta["ss_resolution"] == "(64, 64)"
    assert '"spyke_plasma_v1": 3' in meta["ss_tag_frequency"] and meta["sshs_model_hash"]
    _, step_meta = tensors(Path(done["checkpoints"][0]["path"]))
    assert step_meta["ss_steps"] == "2"
    assert any(line.startswith("step 4/4 loss=") for line in done["logTail"])
    assert any("training in fp32" in w for w in done["warnings"])


async def test_the_engine_draws_differently_with_the_trained_lora(aiohttp_client, settings, dataset_dir) -> None:
    """Train, then generate through the real embedded engine with and without the result."""
    c = await aiohttp_client(create_app(settings))  # the daemon's own backend: the embedded engine
    run = await (await c.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, **BODY})).json()
    done = await wait_run(c, run["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    shutil.copyfile(done["finalFile"], settings.models_path / "loras" / "spyke.safetensors")

    async def draw(**extra) -> np.ndarray:
        body = {"prompt": f"{TRIGGER}, full body", "seed": 3, "steps": 2,
                "resolution": {"width": 64, "height": 64}, **extra}
        resp = await c.post("/jobs", json=body)
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        for _ in range(1200):
            job = await (await c.get(f"/jobs/{job['id']}")).json()
            if job["status"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "succeeded", job["error"]
        png = await (await c.get(f"/jobs/{job['id']}/image")).read()
        return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)

    plain = await draw()
    with_lora = await draw(loraId="spyke", loraStrength=1.0)
    assert np.abs(with_lora - plain).max() > 10
    assert np.array_equal(await draw(), plain)  # the LoRA is taken out again afterwards


async def test_diffusers_kohya_loader_reads_the_lora(tmp_path, settings, dataset_dir) -> None:
    """A third-party loader of kohya files (what ComfyUI and kohya's tools read) accepts every key."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    await train(tmp_path, settings, dataset_dir, steps=4)
    base = settings.models_path / "checkpoints" / CHECKPOINT
    parts = load_components(base, settings)
    parts.tokenizer.model_max_length = 77  # the engine's tokenizer, read from bare vocab files, lacks it
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe(f"{TRIGGER}, full body", num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(3), output_type="np").images[0]

    before = draw()
    pipe.load_lora_weights(str(tmp_path / "run" / "out"), weight_name="spyke.safetensors")
    weights, _ = tensors(tmp_path / "run" / "out" / "spyke.safetensors")
    unet_modules = {k.split(".")[0] for k in weights if k.startswith("lora_unet_")}
    assert len([k for k in pipe.unet.state_dict() if "lora_A" in k]) == len(unet_modules)
    assert any("lora_A" in k for k in pipe.text_encoder.state_dict())
    assert abs(draw() - before).max() > 1e-3


async def test_nan_loss_stops_with_a_clear_error(tmp_path, settings, dataset_dir) -> None:
    def broken(path: Path):
        parts = load_components(path, settings)
        with torch.no_grad():
            parts.unet.conv_out.bias.fill_(float("nan"))
        return parts

    with pytest.raises(JobFailed) as err:
        await train(tmp_path, settings, dataset_dir, steps=4, loader=broken)
    assert err.value.code == "training_failed" and err.value.details["reason"] == "nan_loss"
    assert "NaN at step 1" in err.value.message
    assert not (tmp_path / "run" / "out" / "spyke.safetensors").exists()


async def test_regularisation_images_join_the_epoch(tmp_path, settings) -> None:
    root = tmp_path / "laid-out"
    make_dataset(root / "img" / f"10_{TRIGGER} character")
    make_dataset(root / "reg" / "1_character", ["character, standing", "character, sitting"])
    await train(tmp_path, settings, root, steps=2)
    _, meta = tensors(tmp_path / "run" / "out" / "spyke.safetensors")
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_character": {"n_repeats": 1, "img_count": 2}}
    assert meta["ss_num_reg_images"] == "2" and meta["ss_num_batches_per_epoch"] == "60"
    assert list(json.loads(meta["ss_tag_frequency"])) == [f"10_{TRIGGER} character"]


async def test_resumed_run_ends_where_an_uninterrupted_one_does(client, dataset_dir) -> None:
    body = {**BODY, "steps": 6}
    run = await (await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, **body})).json()
    reference = await wait_run(client, run["id"], {"succeeded", "failed"}, timeout=120)
    assert reference["status"] == "succeeded"
    expected, _ = tensors(Path(reference["finalFile"]))

    queue = client.app[EVENTS].subscribe()
    run = await (await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, **body,
                                                         "outputName": "spyke2"})).json()
    while True:  # cancel right after the first checkpoint
        event = await asyncio.wait_for(queue.get(), 60)
        if event["type"] == "training.checkpoint":
            await client.post(f"/loras/{run['id']}/cancel")
            break
    stopped = await wait_run(client, run["id"], {"cancelled", "succeeded"}, timeout=60)
    assert stopped["status"] == "cancelled" and stopped["step"] < 6
    assert (await client.post(f"/loras/{run['id']}/resume")).status == 202
    done = await wait_run(client, run["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert any(line.startswith("resumed from spyke2-state at step") for line in done["logTail"])
    got, meta = tensors(Path(done["finalFile"]))
    assert meta["ss_steps"] == "6" and got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


async def train(tmp_path: Path, settings: Settings, dataset: Path, steps: int, loader=None) -> None:
    spec = TrainSpec(output_name="spyke", dataset_dir=str(dataset), steps=steps, resolution=64, network_dim=4,
                     network_alpha=2.0, learning_rate=0.05, save_every=2, seed=5, engine="embedded",
                     trigger_word=TRIGGER, checkpoint=CHECKPOINT)
    work = tmp_path / "run"
    work.mkdir(exist_ok=True)
    base = settings.models_path / "checkpoints" / CHECKPOINT
    job = TrainJob("r1", spec, load_dataset(dataset, TRIGGER), work, work / "out", base)
    hooks = TrainerHooks(progress=lambda *a: None, checkpoint=lambda *a: None, log=lambda _: None,
                         warning=lambda _: None)
    await EmbeddedTrainer(settings, loader=loader).run(job, hooks)
