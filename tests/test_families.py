"""A model's family (sd15, sdxl, flux) is read from its safetensors header, never its name, and
GET /models shows it for every checkpoint, LoRA and diffusion model."""

from __future__ import annotations

import os
import struct

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.families import FamilyCache, family_of_file
from tests.family_headers import (
    FLUX_DIFFUSERS_LORA, FLUX_DIFFUSION_MODEL, FLUX_KOHYA_LORA, SD2_CHECKPOINT, SD15_CHECKPOINT, SD15_LORA,
    SDXL_CHECKPOINT, SDXL_LORA, SDXL_TE_ONLY_LORA, write_safetensors,
)
from tests.scripted_backend import ScriptedBackend


@pytest.mark.parametrize(("shapes", "family"), [
    (SD15_CHECKPOINT, "sd15"), (SDXL_CHECKPOINT, "sdxl"), (FLUX_DIFFUSION_MODEL, "flux"),
    (SD15_LORA, "sd15"), (SDXL_LORA, "sdxl"), (SDXL_TE_ONLY_LORA, "sdxl"),
    (FLUX_KOHYA_LORA, "flux"), (FLUX_DIFFUSERS_LORA, "flux"),
])
def test_each_family_is_read_from_the_tensor_names_and_shapes(tmp_path, shapes, family) -> None:
    # Named to mislead: the name says nothing.
    path = write_safetensors(tmp_path / "sd15-flux-sdxl.safetensors", shapes)
    reading = family_of_file(path)
    assert (reading.family, reading.reason) == (family, None)


def test_a_file_of_no_known_family_says_why(tmp_path) -> None:
    sd2 = family_of_file(write_safetensors(tmp_path / "sd2.safetensors", SD2_CHECKPOINT))
    assert sd2.family == "unknown" and "1024" in (sd2.reason or "")
    other = family_of_file(write_safetensors(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": [512, 4, 3, 3]}))
    assert other.family == "unknown" and "no tensor" in (other.reason or "")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 2**40) + b"{}")  # a length no header has: never read
    assert family_of_file(garbage).family == "unknown" and "not a safetensors file" in family_of_file(garbage).reason
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(struct.pack("<Q", 500) + b'{"a": 1')
    assert "cut short" in (family_of_file(cut).reason or "")
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"PK\x03\x04")  # a pickle: never opened
    assert family_of_file(ckpt).family == "unknown" and ".ckpt" in (family_of_file(ckpt).reason or "")


# A model too small or too unusual for its tensors to decide: a 32-wide cross-attention (the tiny test models').
NARROW_CHECKPOINT = {
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [64, 32],
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [514, 32],
}


@pytest.mark.parametrize(("metadata", "family"), [
    ({"modelspec.architecture": "stable-diffusion-v1"}, "sd15"),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd15"),  # kohya's adapter suffix
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base-lora"}, "sdxl"),  # the spec's own example
    ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({"modelspec.architecture": "flux-1-schnell"}, "flux"),
    ({"ss_base_model_version": "sd_v1"}, "sd15"),
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"ss_base_model_version": "flux1"}, "flux"),
    ({"ss_base_model_version": "sdxl_1.0"}, "sdxl"),  # ai-toolkit's names
    ({"ss_base_model_version": "flux.1"}, "flux"),
    # kohya's v-prediction SD 1.x: a version we do not place, beside an architecture we do.
    ({"modelspec.architecture": "stable-diffusion-v1", "ss_base_model_version": "sd_v1_v"}, "sd15"),
])
def test_the_header_metadata_decides_when_the_tensors_do_not(tmp_path, metadata, family) -> None:
    reading = family_of_file(write_safetensors(tmp_path / "m.safetensors", NARROW_CHECKPOINT, metadata))
    assert reading.family == family
    assert "metadata" in (reading.reason or "") and next(iter(metadata)) in (reading.reason or "")


def test_tensors_that_decide_win_and_a_contradiction_is_unknown_with_both_sides(tmp_path) -> None:
    agreeing = write_safetensors(tmp_path / "a.safetensors", SDXL_CHECKPOINT,
                                 {"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    assert (family_of_file(agreeing).family, family_of_file(agreeing).reason) == ("sdxl", None)
    liar = family_of_file(write_safetensors(tmp_path / "b.safetensors", SDXL_CHECKPOINT,
                                            {"ss_base_model_version": "sd_v1"}))
    assert liar.family == "unknown"
    assert "read as SDXL" in liar.reason and "says Stable Diffusion 1.5" in liar.reason and "ss_base_model_version = 'sd_v1'" in liar.reason
    # SD 2.x's 1024-wide cross-attention is no family of ours, whatever its metadata claims.
    sd2 = family_of_file(write_safetensors(tmp_path / "c.safetensors", SD2_CHECKPOINT,
                                           {"modelspec.architecture": "stable-diffusion-v1"}))
    assert sd2.family == "unknown" and "1024" in sd2.reason and "Stable Diffusion 1.5" in sd2.reason
    # The two keys disagree, and the tensors do not decide.
    torn = family_of_file(write_safetensors(tmp_path / "d.safetensors", NARROW_CHECKPOINT,
                                            {"modelspec.architecture": "flux-1-dev", "ss_base_model_version": "sd_v1"}))
    assert torn.family == "unknown" and "contradicts itself" in torn.reason
    # Another architecture's metadata: unknown, saying which.
    sd3 = family_of_file(write_safetensors(tmp_path / "e.safetensors", NARROW_CHECKPOINT,
                                           {"modelspec.architecture": "stable-diffusion-3-large"}))
    assert sd3.family == "unknown" and "stable-diffusion-3-large" in sd3.reason
    # Metadata we cannot place does not override tensors that decide.
    plain = family_of_file(write_safetensors(tmp_path / "f.safetensors", SD15_LORA,
                                             {"modelspec.architecture": "my-own-arch"}))
    assert plain.family == "sd15"


def test_a_diffusers_folder_says_its_family_in_model_index(tmp_path) -> None:
    folder = tmp_path / "animagine"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert family_of_file(folder).family == "sdxl"


def test_a_file_replaced_under_the_same_name_is_read_again(tmp_path) -> None:
    cache = FamilyCache()
    path = write_safetensors(tmp_path / "model.safetensors", SD15_CHECKPOINT)
    assert cache.of(path).family == "sd15"
    write_safetensors(path, SDXL_CHECKPOINT)
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size changed
    assert cache.of(path).family == "sdxl"


async def test_get_models_lists_each_file_with_its_family(aiohttp_client, tmp_path) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "anything-v5.safetensors", SD15_CHECKPOINT)
    write_safetensors(models / "checkpoints" / "animagine-xl.safetensors", SDXL_CHECKPOINT)
    write_safetensors(models / "loras" / "spyke_xl.safetensors", SDXL_LORA)
    write_safetensors(models / "loras" / "sweep--x-step00000200.safetensors", SDXL_LORA)  # staged: not installed
    write_safetensors(models / "diffusion_models" / "flux1-dev.safetensors", FLUX_DIFFUSION_MODEL)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"\xff" * 4)
    folders = {f: models / f for f in ("checkpoints", "loras", "diffusion_models")}
    backend = ScriptedBackend({f: sorted(p.name for p in d.iterdir()) for f, d in folders.items()}, folders=folders)
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data"), backend))

    resp = await client.get("/models")
    assert resp.status == 200
    body = await resp.json()
    families = {k: {m["name"]: m["family"] for m in v} for k, v in body.items()}
    assert families == {
        "checkpoints": {"animagine-xl.safetensors": "sdxl", "anything-v5.safetensors": "sd15",
                        "broken.safetensors": "unknown"},
        "loras": {"spyke_xl.safetensors": "sdxl"},
        "diffusionModels": {"flux1-dev.safetensors": "flux"},
    }
    broken = next(m for m in body["checkpoints"] if m["name"] == "broken.safetensors")
    assert "safetensors" in broken["familyNote"] and broken["sizeBytes"] == 4
    assert "/models" in (await (await client.get("/openapi.json")).json())["paths"]


async def test_models_known_only_by_name_are_listed_as_unknown(aiohttp_client, tmp_path) -> None:
    # An attached ComfyUI without its install dir: the names, no header to read.
    backend = ScriptedBackend({"checkpoints": ["animagine-xl.safetensors"], "loras": [], "diffusion_models": []})
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data"), backend))
    body = await (await client.get("/models")).json()
    assert body["checkpoints"] == [{"name": "animagine-xl.safetensors", "family": "unknown", "sizeBytes": None,
                                    "familyNote": "the backend's model folder is not on this machine, so its "
                                                  "header cannot be read", "backends": ["local"], "sha256": None}]
