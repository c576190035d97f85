"""`GET /loras` attached to a ComfyUI (no local LoRA folder): the files ComfyUI lists, with the metadata
ComfyUI reads for us (`GET /view_metadata/loras`, recorded in `view-metadata-and-launch.json`)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from sidecar.api.app import create_app
from tests.fake_comfyui import load_fixture

RECORDED = load_fixture("view-metadata-and-launch.json")["requests"]


def install_recorded_lora(comfy_home) -> dict[str, str]:
    """The recorded LoRA's metadata in a real safetensors file of the fake's install."""
    found = next(r for r in RECORDED if r["status"] == 200)
    name = found["request"].split("filename=")[1]
    meta = found["body"]
    save_file({"lora_unet_down.lora_down.weight": np.zeros((4, 8), np.float16)},
              str(comfy_home / "models" / "loras" / name), metadata=meta)
    return meta


async def test_the_fake_answers_view_metadata_as_recorded(fake_comfy, comfy_home, aiohttp_client) -> None:
    import aiohttp

    meta = install_recorded_lora(comfy_home)
    async with aiohttp.ClientSession() as http:
        for recorded in RECORDED:
            method, path = recorded["request"].split(" ", 1)
            async with http.request(method, fake_comfy.url + path) as resp:
                assert resp.status == recorded["status"], path
                if recorded["status"] == 200:
                    assert await resp.json() == recorded["body"]
    assert meta["ss_trigger_word"] == "spyke_plasma_v1"


async def test_loras_in_attach_mode_show_the_trigger_word_and_training_figures(aiohttp_client, comfy_settings,
                                                                              comfy_home) -> None:
    meta = install_recorded_lora(comfy_home)
    (comfy_home / "models" / "loras" / "plain.ckpt").write_bytes(b"no metadata to read")
    client = await aiohttp_client(create_app(comfy_settings))
    resp = await client.get("/loras")
    assert resp.status == 200
    loras = {entry["id"]: entry for entry in (await resp.json())["loras"]}
    spyke = loras["spyke_plasma_v1"]
    assert spyke["triggerWord"] == "spyke_plasma_v1"
    assert (spyke["networkDim"], spyke["networkAlpha"], spyke["baseModel"], spyke["resolution"]) == (
        4, 4.0, "sd_v1", "512x512")
    assert spyke["metadata"] == meta and spyke["sizeBytes"] is None  # ComfyUI does not say the size
    assert loras["plain"]["metadata"] == {} and loras["plain"]["triggerWord"] is None
