"""SDXL on the embedded engine: the tiny random SDXL checkpoint (SGM key layout, made by `sidecar models
make-tiny --family sdxl`) through the daemon as `sidecar serve` builds it, on the m1max-32gb profile;
the SGM <-> diffusers conversions; every key of a kohya SDXL LoRA finding its layer."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.conftest_engine import TINY_SDXL, TINY_SDXL_LORA, TINY_SDXL_LORA_B

pytestmark = pytest.mark.engine

SIZE = {"width": 64, "height": 96}


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, sdxl_models: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=sdxl_models,
                        checkpoint=TINY_SDXL, profile="m1max-32gb", steps=3, preview_interval=0.0)
    return await aiohttp_client(create_app(settings))


async def submit(client, **body) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "resolution": SIZE, **body})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def finished(client, job_id: str, timeout: float = 120) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.05)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job.get("error")
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job.get('status')}")


async def png(client, job_id: str) -> tuple[str, np.ndarray]:
    resp = await client.get(f"/jobs/{job_id}/image")
    assert resp.status == 200 and resp.content_type == "image/png"
    with Image.open(io.BytesIO(await resp.read())) as img:
        pixels = np.asarray(img.convert("RGB"))
    return hashlib.sha256(pixels.tobytes()).hexdigest(), pixels


async def test_txt2img_renders_sdxl_and_a_seed_repeats_to_the_pixel(client) -> None:
    first = await submit(client, seed=3)
    assert first["workflowTemplate"] == "sdxl-txt2img" and first["params"]["family"] == "sdxl"
    again, other = await submit(client, seed=3), await submit(client, seed=4)
    for job in (first, again, other):
        done = await finished(client, job["id"])
    assert done["engine"] == "embedded" and done["progress"] == {"step": 3, "total": 3}
    digest, pixels = await png(client, first["id"])
    assert pixels.shape == (96, 64, 3) and pixels.std() > 1  # an image, not a flat field
    assert (await png(client, again["id"]))[0] == digest
    assert (await png(client, other["id"]))[0] != digest
    # The live preview came from the SDXL latent (its own latent-to-RGB factors).
    assert (await client.get(f"/jobs/{first['id']}/preview")).status == 200
    loaded = (await (await client.get("/health")).json())["backend"]["loaded"]
    assert loaded["checkpoint"] == TINY_SDXL and loaded["baseLoads"] == 1


async def test_a_lora_stack_applies_each_lora_and_its_strength_shows(client) -> None:
    plain = await submit(client, seed=3)
    one = await submit(client, seed=3, loras=[{"id": "tiny-sdxl-lora", "strength": 1.0}])
    weaker = await submit(client, seed=3, loras=[{"id": "tiny-sdxl-lora", "strength": 0.4}])
    stack = await submit(client, seed=3, loras=[{"id": "tiny-sdxl-lora", "strength": 1.0},
                                                {"id": "tiny-sdxl-lora-b", "strength": 0.7}])
    again = await submit(client, seed=3, loras=[{"id": "tiny-sdxl-lora", "strength": 1.0},
                                                {"id": "tiny-sdxl-lora-b", "strength": 0.7}])
    assert stack["workflowTemplate"] == "sdxl-txt2img-lora"
    assert [(lo["file"], lo["strength"]) for lo in stack["params"]["loras"]] == [(TINY_SDXL_LORA, 1.0),
                                                                                 (TINY_SDXL_LORA_B, 0.7)]
    digests = {}
    for name, job in (("plain", plain), ("one", one), ("weaker", weaker), ("stack", stack), ("again", again)):
        await finished(client, job["id"])
        digests[name] = (await png(client, job["id"]))[0]
    assert len({digests[k] for k in ("plain", "one", "weaker", "stack")}) == 4
    assert digests["again"] == digests["stack"]
    loaded = (await (await client.get("/health")).json())["backend"]["loaded"]
    assert loaded["loras"] == [TINY_SDXL_LORA, TINY_SDXL_LORA_B] and loaded["baseLoads"] == 1


async def test_img2img_starts_from_the_init_image(client, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    gradient = np.zeros((96, 64, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    gradient[48:, :, 2] = 200
    Image.fromarray(gradient).save(init)
    light = await submit(client, seed=5, initImagePath=str(init), denoise=0.3)
    again = await submit(client, seed=5, initImagePath=str(init), denoise=0.3)
    heavy = await submit(client, seed=5, initImagePath=str(init), denoise=0.9)
    assert light["workflowTemplate"] == "sdxl-img2img"
    for job in (light, again, heavy):
        await finished(client, job["id"])
    (d_light, p_light), (d_again, _), (d_heavy, p_heavy) = [await png(client, j["id"]) for j in (light, again, heavy)]
    assert p_light.shape == (96, 64, 3) and d_light == d_again and d_light != d_heavy


async def test_the_laptop_profile_still_refuses_sdxl_on_the_embedded_engine(aiohttp_client, tmp_path: Path,
                                                                            sdxl_models: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=sdxl_models,
                        checkpoint=TINY_SDXL)  # m1pro-16gb, the default
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/jobs", json={"prompt": "x"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "family_not_supported"
    assert "m1max-32gb" in body["error"]["details"]["profiles"]


# -- conversions and LoRA keys (no daemon)

def test_the_sgm_checkpoint_converts_to_every_weight_of_the_models_and_nothing_else(sdxl_models: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sidecar.engine import convert, convert_sdxl
    from sidecar.engine.models import _clip_config, read_arch, read_safetensors

    path = sdxl_models / "checkpoints" / TINY_SDXL
    checkpoint = read_safetensors(path)
    assert {k.split(".")[0] for k in checkpoint} == {"model", "first_stage_model", "conditioner"}
    assert "model.diffusion_model.label_emb.0.0.weight" in checkpoint  # SDXL's size/pooled-text embedding
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in checkpoint
    arch = read_arch(path, "sdxl")
    te2 = CLIPTextModelWithProjection(_clip_config(arch.text_encoder_2))
    parts = {
        "unet": (UNet2DConditionModel.from_config(arch.unet), convert.unet_from_ldm(checkpoint, arch.unet)),
        "vae": (AutoencoderKL.from_config(arch.vae), convert.vae_from_ldm(checkpoint, arch.vae)),
        "te1": (CLIPTextModel(_clip_config(arch.text_encoder)), convert_sdxl.te1_from_sgm(checkpoint)),
        "te2": (te2, convert_sdxl.te2_from_sgm(checkpoint, te2)),
    }
    converted = 0
    for name, (model, state) in parts.items():
        expected = set(model.state_dict())
        assert set(state) == expected, (name, sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3])
        converted += len(state)
    # Every tensor of the file went somewhere (te2's fused in_proj becomes three).
    layers = arch.text_encoder_2["num_hidden_layers"]
    assert converted == len(checkpoint) + 4 * layers


def test_the_conversions_round_trip_exactly() -> None:
    """diffusers -> SGM (make-tiny) -> diffusers (loading) gives back each tensor."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from sidecar.engine import convert, convert_sdxl
    from sidecar.engine.models import _clip_config, shipped_config
    from sidecar.engine.tiny_sdxl import TINY_TEXT_ENCODER_2, TINY_UNET

    torch.manual_seed(0)
    cfg = {**shipped_config("unet", "sdxl"), **TINY_UNET}
    unet = UNet2DConditionModel.from_config(cfg)
    back = convert.unet_from_ldm(convert.unet_to_ldm(unet.state_dict(), cfg), cfg)
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items()) and len(back) == len(unet.state_dict())
    te2 = CLIPTextModelWithProjection(_clip_config({**shipped_config("text_encoder_2", "sdxl"), **TINY_TEXT_ENCODER_2}))
    back = convert_sdxl.te2_from_sgm(convert_sdxl.te2_to_sgm(te2.state_dict()), te2)
    assert all(torch.equal(back[k], v) for k, v in te2.state_dict().items()) and len(back) == len(te2.state_dict())


def test_every_key_of_a_kohya_sdxl_lora_is_applied_to_its_layer(sdxl_models: Path) -> None:
    from sidecar.engine.lora import TE1_PREFIX, TE2_PREFIX, UNET_PREFIX, Patcher, lora_modules, sdxl_unet_names
    from sidecar.engine.models import TokenizerPlaces, load_checkpoint, read_lora

    parts = load_checkpoint(sdxl_models / "checkpoints" / TINY_SDXL, TokenizerPlaces(sdxl_models))
    tensors, meta = read_lora(sdxl_models / "loras" / TINY_SDXL_LORA)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    # sd-scripts' names: the UNet by its SGM module tree, the encoders by transformers' names.
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k.lora_down.weight" in tensors
    assert "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight" in tensors
    patchers = {UNET_PREFIX: Patcher(parts.unet, UNET_PREFIX, namer=sdxl_unet_names),
                TE1_PREFIX: Patcher(parts.text_encoder, TE1_PREFIX),
                TE2_PREFIX: Patcher(parts.text_encoder_2, TE2_PREFIX)}
    used = set()
    for prefix, patcher in patchers.items():
        names = lora_modules(tensors, prefix)
        before = {n: patcher.names[n].weight.detach().clone() for n in names}
        assert names and patcher.apply(tensors, 1.0) == (len(names), 0), prefix
        assert all(not torch.equal(patcher.names[n].weight, before[n]) for n in names)  # each layer changed
        used |= {k for k in tensors if k.split(".")[0] in names}
        patcher.restore()
        assert all(torch.equal(patcher.names[n].weight, before[n]) for n in names)
    assert used == set(tensors)  # nothing in the file went unapplied


def test_full_size_sdxl_unet_modules_get_the_sgm_names_sd_scripts_writes() -> None:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from sidecar.engine.convert_sdxl import unet_module_names
    from sidecar.engine.models import shipped_config

    config = shipped_config("unet", "sdxl")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    names = unet_module_names(unet, config)
    assert names["down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"] == \
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k"
    assert names["down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2"] == \
        "input_blocks.8.1.transformer_blocks.9.ff.net.2"
    assert names["mid_block.attentions.0.proj_in"] == "middle_block.1.proj_in"
    assert names["up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0"] == \
        "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0"
    assert names["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    assert names["add_embedding.linear_1"] == "label_emb.0.0"
    assert names["down_blocks.0.resnets.1.conv1"] == "input_blocks.2.0.in_layers.2"


async def test_flux_stays_refused_on_the_embedded_engine_where_the_profile_runs_it(aiohttp_client,
                                                                                   tmp_path: Path) -> None:
    from tests.family_headers import FLUX_DIFFUSION_MODEL, write_safetensors

    models = tmp_path / "models"
    write_safetensors(models / "diffusion_models" / "flux1-dev.safetensors", FLUX_DIFFUSION_MODEL)
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models,
                        profile="cuda-24gb")
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/jobs", json={"prompt": "x", "checkpoint": "flux1-dev.safetensors"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "family_not_supported", body
    assert body["error"]["details"]["allowedFamilies"] == ["sd15", "sdxl"]
    assert "ComfyUI backend" in body["error"]["message"]


def test_an_sdxl_diffusers_folder_loads_as_sdxl_with_the_same_weights(sdxl_models: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from sidecar.engine.models import TokenizerPlaces, load_checkpoint

    parts = load_checkpoint(sdxl_models / "checkpoints" / TINY_SDXL, TokenizerPlaces(sdxl_models))
    folder = tmp_path / "tiny-sdxl-diffusers"
    for sub, model in (("unet", parts.unet), ("vae", parts.vae), ("text_encoder", parts.text_encoder),
                       ("text_encoder_2", parts.text_encoder_2)):
        model.save_pretrained(folder / sub)
    shutil.copytree(sdxl_models / "checkpoints" / "tiny-sdxl.tokenizer", folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    again = load_checkpoint(folder, TokenizerPlaces(tmp_path))
    assert again.family == "sdxl" and type(again.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    for a, b in ((parts.unet, again.unet), (parts.text_encoder_2, again.text_encoder_2)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_larger_mac_renders_sdxl_but_is_not_offered_as_a_place_to_train_it() -> None:
    from sidecar.profiles import get_profile
    from sidecar.training.placement import where_it_trains

    mac = get_profile("m1max-32gb")
    assert mac.allows("sdxl") and not mac.allows("flux") and mac.for_family("sdxl").fits(832, 1216)
    assert not get_profile("m1pro-16gb").allows("sdxl")
    here = where_it_trains("sdxl")[-1]
    assert "cuda-24gb" in here and "m1max-32gb" not in here


def test_prompts_condition_the_unet_as_diffusers_sdxl_pipeline_does(sdxl_models: Path) -> None:
    """Our context, pooled embedding and size ids against StableDiffusionXLPipeline.encode_prompt and
    its add_time_ids on the same tiny model (its second tokenizer padding with `!`, id 0, as SDXL's does)."""
    import copy

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from sidecar.engine import conditioning
    from sidecar.engine.models import TokenizerPlaces, load_checkpoint
    from sidecar.engine.render import size_conditioning

    parts = load_checkpoint(sdxl_models / "checkpoints" / TINY_SDXL, TokenizerPlaces(sdxl_models))
    tokenizer, tokenizer_2 = copy.deepcopy(parts.tokenizer), copy.deepcopy(parts.tokenizer)
    tokenizer.model_max_length = tokenizer_2.model_max_length = 77  # as the hub's tokenizer configs say
    tokenizer_2.pad_token = "!"
    pipe = StableDiffusionXLPipeline(vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=parts.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(parts.scheduler_config))
    with torch.inference_mode():
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            "spyke_plasma_v1, standing", device="cpu", do_classifier_free_guidance=True,
            negative_prompt="lowres, blurry")
        ours, our_pooled = conditioning.encode_sdxl(parts.tokenizer, parts.text_encoder, parts.text_encoder_2,
                                                    "spyke_plasma_v1, standing")
        our_neg, our_neg_pooled = conditioning.encode_sdxl(parts.tokenizer, parts.text_encoder,
                                                           parts.text_encoder_2, "lowres, blurry")
    for mine, theirs in ((ours, embeds), (our_pooled, pooled), (our_neg, neg_embeds), (our_neg_pooled, neg_pooled)):
        assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-5)
    time_ids = pipe._get_add_time_ids((96, 64), (0, 0), (96, 64), dtype=torch.float32,
                                      text_encoder_projection_dim=parts.text_encoder_2.config.projection_dim)
    assert torch.equal(size_conditioning(64, 96, our_pooled, torch.float32)["time_ids"], time_ids)


def test_the_embedded_trainer_refuses_an_sdxl_or_flux_base_naming_where_it_trains(sdxl_models: Path,
                                                                                 tmp_path: Path) -> None:
    # Even when the run was told family sd15: the file's header is read before any weight is.
    from sidecar.engine.models import load_training_components
    from sidecar.errors import FamilyNotSupported
    from tests.family_headers import FLUX_DIFFUSION_MODEL, write_safetensors

    with pytest.raises(FamilyNotSupported) as sdxl:
        load_training_components(sdxl_models / "checkpoints" / "tiny-sdxl.safetensors")
    assert sdxl.value.code == "family_not_supported" and sdxl.value.http_status == 400
    assert "kohya or ai-toolkit" in str(sdxl.value) and "tiny-sdxl.safetensors" in str(sdxl.value)
    assert sdxl.value.details["family"] == "sdxl" and "remote vast" in sdxl.value.details["where"]
    assert any("cuda-24gb" in w for w in sdxl.value.details["where"])
    # A ComfyUI all-in-one Flux checkpoint: BFL's blocks under the UNet prefix.
    flux = write_safetensors(tmp_path / "checkpoints" / "flux1-dev-fp8.safetensors",
                             {f"model.diffusion_model.{k}": v for k, v in FLUX_DIFFUSION_MODEL.items()})
    with pytest.raises(FamilyNotSupported) as refused:
        load_training_components(flux)
    assert refused.value.details["family"] == "flux" and "Flux" in str(refused.value)
