"""Model files the embedded engine reads: make-tiny writes the real formats (SD1.5 original key layout,
kohya LoRA, ControlNet 1.x), our layout writer agrees with diffusers' reader on the full-size SD1.5
architecture, diffusers folders load, and the tokenizer is found offline or its absence explained."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from sidecar.backend import RunContext
from sidecar.config import Settings
from sidecar.engine import convert
from sidecar.engine.backend import EmbeddedBackend
from sidecar.engine.models import TokenizerPlaces, list_models, load_checkpoint, load_controlnet, shipped_config
from sidecar.engine.tokenizer import BPE_GZ, find_tokenizer, load_tokenizer, vocab_from_bpe_gz
from sidecar.errors import EngineUnavailable
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET, TINY_LORA, fill

pytestmark = pytest.mark.engine


def _keys(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), f.metadata() or {}


def test_make_tiny_writes_real_file_formats(engine_models: Path) -> None:
    ckpt_keys, _ = _keys(engine_models / "checkpoints" / TINY_CHECKPOINT)
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in ckpt_keys}
    assert prefixes == {"model.diffusion_model", "cond_stage_model.transformer", "first_stage_model.encoder",
                        "first_stage_model.decoder", "first_stage_model.quant_conv",
                        "first_stage_model.post_quant_conv"}
    assert "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight" in ckpt_keys
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in ckpt_keys

    lora_keys, meta = _keys(engine_models / "loras" / TINY_LORA)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in lora_keys
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight" in lora_keys
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in lora_keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in lora_keys
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"

    cn_keys, _ = _keys(engine_models / "controlnet" / TINY_CONTROLNET)
    assert all(k.startswith("control_model.") for k in cn_keys)
    assert "control_model.input_hint_block.14.weight" in cn_keys and "control_model.zero_convs.0.0.weight" in cn_keys

    assert list_models(engine_models, "checkpoints") == [TINY_CHECKPOINT]  # arch/tokenizer files are not models
    assert list_models(engine_models, "loras") == [TINY_LORA]


def test_models_cli_lists_the_dir(engine_models: Path) -> None:
    from sidecar.cli import main

    result = CliRunner().invoke(main, ["models", "list", "--models-dir", str(engine_models), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"checkpoints": [TINY_CHECKPOINT], "loras": [TINY_LORA],
                                         "controlnet": [TINY_CONTROLNET]}


def _meta_state(factory) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return factory().state_dict()


def test_full_size_sd15_layout_round_trips_through_diffusers_reader() -> None:
    """The writer used by make-tiny produces exactly the keys real SD1.5 files have (diffusers'
    single-file reader maps every one back), checked on the real architecture without allocating it."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    unet_cfg, vae_cfg, cn_cfg = shipped_config("unet"), shipped_config("vae"), shipped_config("controlnet")
    unet = _meta_state(lambda: UNet2DConditionModel.from_config(unet_cfg))
    ldm = convert.unet_to_ldm(unet, unet_cfg)
    assert len(ldm) == 686  # SD1.5's model.diffusion_model.* tensor count
    for key in ("model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.bias",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.input_blocks.4.0.skip_connection.weight", "model.diffusion_model.out.2.weight"):
        assert key in ldm, key
    back = convert.unet_from_ldm(ldm, unet_cfg)
    assert set(back) == set(unet)

    vae = _meta_state(lambda: AutoencoderKL.from_config(vae_cfg))
    vae_ldm = convert.vae_to_ldm(vae, vae_cfg)
    assert len(vae_ldm) == 248
    assert vae_ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in vae_ldm
    assert set(convert.vae_from_ldm(vae_ldm, vae_cfg)) == set(vae)

    cn = _meta_state(lambda: ControlNetModel.from_config(cn_cfg))
    cn_ldm = convert.controlnet_to_ldm(cn, cn_cfg)
    assert "control_model.input_hint_block.14.weight" in cn_ldm and "control_model.middle_block_out.0.weight" in cn_ldm
    assert set(convert.controlnet_from_ldm(cn_ldm, cn_cfg)) == set(cn)


def test_safetensors_reader_matches_the_library_and_refuses_a_cut_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from sidecar.engine.models import read_safetensors
    from sidecar.errors import JobFailed

    tensors = {"w": torch.randn(4, 3).half(), "b": torch.randn(5).bfloat16(), "s": torch.tensor(2.5),
               "empty": torch.zeros(0, 4), "ids": torch.arange(7), "mask": torch.tensor([True, False])}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    got, ref = read_safetensors(path), load_file(str(path))
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value)
    # Separate storages: the cache's cast frees each fp16 tensor as it replaces it (peak RSS).
    assert got["w"].untyped_storage().data_ptr() != got["b"].untyped_storage().data_ptr()
    cut = tmp_path / "controlnet" / "cut.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(JobFailed) as failed:
        load_controlnet(cut)
    assert failed.value.code == "model_load_failed" and "past the end" in failed.value.message


def test_tiny_checkpoint_loads_back_to_the_same_weights(engine_models: Path) -> None:
    from safetensors.torch import load_file

    ckpt = engine_models / "checkpoints" / TINY_CHECKPOINT
    parts = load_checkpoint(ckpt, TokenizerPlaces(engine_models))
    raw = load_file(str(ckpt))
    assert torch.equal(parts.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(parts.vae.decoder.mid_block.attentions[0].to_q.weight,
                       raw["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0])
    assert torch.equal(parts.text_encoder.embeddings.token_embedding.weight,
                       raw["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"])
    assert parts.tokenizer("ab", add_special_tokens=True)["input_ids"][0] == parts.tokenizer.bos_token_id


async def test_a_diffusers_folder_checkpoint_renders(tmp_path: Path, engine_models: Path, pose_png: Path) -> None:
    """Checkpoints may be diffusers folders (with their own tokenizer/); they render like single files."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    parts = load_checkpoint(models / "checkpoints" / TINY_CHECKPOINT, TokenizerPlaces(models))
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=DDIMScheduler.from_config(parts.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(models / "checkpoints" / "tiny-diffusers")
    assert "tiny-diffusers" in list_models(models, "checkpoints")

    backend = EmbeddedBackend(Settings(data_dir=tmp_path / "data", device="cpu", models_dir=models))
    await backend.start()
    outputs = []
    try:
        for name in ("tiny-diffusers", TINY_CHECKPOINT):
            out = tmp_path / f"{name}.png"

            async def noop(_: str) -> None:
                return None

            await backend.run(RunContext(job_id=name, workflow=fill("txt2img", checkpoint_name=name), output_path=out,
                                         on_progress=lambda s, t: None, on_prompt_id=noop,
                                         cancel_event=asyncio.Event()))
            outputs.append(out.read_bytes())
    finally:
        await backend.stop()
    # Same weights, two containers: the same image (PNG bytes differ only by the embedded workflow).
    a, b = (np.asarray(Image.open(io.BytesIO(data))) for data in outputs)
    assert np.array_equal(a, b)


def _fake_bpe(path: Path) -> Path:
    lines = ["#version: 0.2 - a test BPE file in OpenAI CLIP's format", "a b", "ab c</w>", "x y"]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


def test_clip_bpe_file_converts_to_the_vocab_clip_uses(tmp_path: Path) -> None:
    vocab, merges = vocab_from_bpe_gz(_fake_bpe(tmp_path / BPE_GZ))
    assert merges == ["a b", "ab c</w>", "x y"]
    # CLIP's order: 256 byte tokens, the same with </w>, one token per merge, then the two specials.
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["ab"] == 512 and vocab["abc</w>"] == 513
    assert vocab["<|startoftext|>"] == 515 and vocab["<|endoftext|>"] == 516
    tok = load_tokenizer(find_tokenizer(tmp_path / "models", None, explicit=tmp_path), tmp_path / "cache")
    assert tok.convert_ids_to_tokens(tok("abc", add_special_tokens=False)["input_ids"]) == ["abc</w>"]


def test_the_shipped_clip_vocabulary_tokenizes_like_clip(tmp_path: Path) -> None:
    # Nothing in the models dir, no ComfyUI: the BPE file the package ships is CLIP's real vocabulary.
    source = find_tokenizer(tmp_path / "models", None)
    assert source.kind == "bpe_gz" and source.path.name == BPE_GZ
    tok = load_tokenizer(source, tmp_path / "cache")
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_a_broken_install_without_tokenizer_files_says_where_to_put_them(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.engine.tokenizer._packaged_bpe", lambda: None)  # the shipped file is gone
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(EngineUnavailable) as err:
        find_tokenizer(tmp_path / "models", None)
    assert str(tmp_path / "models" / "tokenizers" / "clip-vit-large-patch14") in err.value.message
    assert "vocab.json" in err.value.message and "merges.txt" in err.value.message

    comfy = tmp_path / "ComfyUI"
    (comfy / "comfy" / "sd1_tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (comfy / "comfy" / "sd1_tokenizer" / name).write_text("{}" if name.endswith("json") else "#version: 0.2\n")
    assert find_tokenizer(tmp_path / "models", comfy).path == comfy / "comfy" / "sd1_tokenizer"
    # Pointed at a ComfyUI install's models/ folder, the engine finds that install's tokenizer itself.
    assert find_tokenizer(comfy / "models", None).path == comfy / "comfy" / "sd1_tokenizer"


def test_make_tiny_also_writes_a_tiny_likeness_model(engine_models: Path) -> None:
    from sidecar.likeness.ccip import CcipScorer

    scorer = CcipScorer.open(engine_models, "ccip-tiny")  # CCIP's three files, loadable as the real ones
    assert scorer.threshold > 0 and len(scorer.weights) == 16


async def test_the_tiny_models_say_their_family_in_get_models(aiohttp_client, tmp_path, engine_models: Path,
                                                              sdxl_models: Path) -> None:
    # The demo's models: their 32-wide cross-attention is no real family's, so the header's modelspec
    # metadata (written by make-tiny as sd-scripts writes it) says the family.
    from sidecar.api.app import create_app

    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    for name in ("checkpoints/tiny-sdxl.safetensors", "loras/tiny-sdxl-lora.safetensors"):
        shutil.copyfile(sdxl_models / name, models / name)
    settings = Settings(data_dir=tmp_path / "data", device="cpu", models_dir=models)
    client = await aiohttp_client(create_app(settings, EmbeddedBackend(settings)))
    body = await (await client.get("/models")).json()
    seen = {m["name"]: (m["family"], m.get("familyNote") or "") for kind in ("checkpoints", "loras") for m in body[kind]}
    assert seen[TINY_CHECKPOINT][0] == "sd15" and "modelspec.architecture" in seen[TINY_CHECKPOINT][1]
    assert seen[TINY_LORA][0] == "sd15"
    assert seen["tiny-sdxl.safetensors"][0] == "sdxl" and seen["tiny-sdxl-lora.safetensors"][0] == "sdxl"
    _, meta = _keys(engine_models / "checkpoints" / TINY_CHECKPOINT)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.resolution"] == "512x512"
