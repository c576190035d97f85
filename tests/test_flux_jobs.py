"""A Flux job: its checkpoint is a file of ComfyUI's diffusion_models/, its template loads the text
encoders and VAE the settings name; it runs on a GPU profile's ComfyUI (the fake, validating against
the recorded object_info) and the laptop refuses it with family_not_supported."""

from __future__ import annotations

import asyncio

from sidecar.api.app import create_app
from sidecar.graph import Graph
from tests.family_headers import FLUX_DIFFUSION_MODEL, FLUX_KOHYA_LORA, SD15_LORA, write_safetensors

FLUX = "flux1-dev-fp8.safetensors"


def install_flux(comfy_home) -> None:
    models = comfy_home / "models"
    write_safetensors(models / "diffusion_models" / FLUX, FLUX_DIFFUSION_MODEL)
    write_safetensors(models / "loras" / "spyke_flux.safetensors", FLUX_KOHYA_LORA)
    write_safetensors(models / "loras" / "spyke_15.safetensors", SD15_LORA)
    for folder, name in (("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp8_e4m3fn.safetensors"),
                         ("vae", "ae.safetensors")):
        (models / folder).mkdir(parents=True, exist_ok=True)
        (models / folder / name).write_bytes(b"weights")


async def _post(client, **body):
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing on a rooftop", **body})
    return resp.status, await resp.json()


async def _wait(client, job_id: str) -> dict:
    for _ in range(600):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job["status"])


async def test_a_flux_job_runs_on_a_gpu_comfyui(aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    install_flux(comfy_home)
    settings = comfy_settings.model_copy(update={"profile": "cuda-24gb", "comfyui_dir": comfy_home})
    client = await aiohttp_client(create_app(settings))
    status, job = await _post(client, checkpoint=FLUX, steps=2, loras=[{"id": "spyke_flux", "strength": 0.9}])
    assert status == 202, job
    assert job["workflowTemplate"] == "flux-txt2img-lora"
    p = job["params"]
    assert (p["family"], p["width"], p["height"], p["cfg"], p["sampler"], p["scheduler"]) == (
        "flux", 1024, 1024, 1.0, "euler", "simple")
    done = await _wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    graph = Graph(done["workflow"])
    [clip] = graph.of_type("DualCLIPLoader")
    assert (clip.inputs["clip_name1"], clip.inputs["clip_name2"], clip.inputs["type"]) == (
        "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "flux")
    assert [n.inputs["unet_name"] for n in graph.of_type("UNETLoader")] == [FLUX]
    assert [(n.inputs["width"], n.inputs["height"]) for n in graph.of_type("ModelSamplingFlux")] == [(1024, 1024)]
    assert fake_comfy.executions  # ComfyUI (the fake, on the recorded object_info) took it
    # Reproduced whole: still a Flux job, held to Flux's sizes.
    resp = await client.post("/jobs", json={"workflow": done["workflow"]})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["params"]["family"] == "flux"
    # An SD 1.5 LoRA on it: refused, naming both families.
    status, body = await _post(client, checkpoint=FLUX, loraId="spyke_15")
    assert status == 400 and body["error"]["code"] == "lora_family_mismatch"
    assert (body["error"]["details"]["loraFamily"], body["error"]["details"]["checkpointFamily"]) == ("sd15", "flux")


async def test_the_laptop_refuses_a_flux_job(aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    install_flux(comfy_home)
    client = await aiohttp_client(create_app(comfy_settings.model_copy(update={"comfyui_dir": comfy_home})))
    status, body = await _post(client, checkpoint=FLUX)
    assert status == 400 and body["error"]["code"] == "family_not_supported"
    assert body["error"]["details"]["family"] == "flux" and body["error"]["details"]["profile"] == "m1pro-16gb"
    assert "cuda-24gb" in body["error"]["message"]
    assert fake_comfy.prompt_posts == 0  # refused before anything reached ComfyUI


async def test_a_flux_lora_stack_is_chained_model_only_and_a_lora_with_text_encoder_weights_keeps_them(
        aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    from tests.family_headers import FLUX_DIFFUSERS_LORA

    install_flux(comfy_home)
    loras = comfy_home / "models" / "loras"
    write_safetensors(loras / "ink_flux.safetensors", FLUX_DIFFUSERS_LORA)  # ai-toolkit: transformer only
    write_safetensors(loras / "tone_flux.safetensors", FLUX_DIFFUSERS_LORA, metadata={"n": "2"})
    settings = comfy_settings.model_copy(update={"profile": "cuda-24gb", "comfyui_dir": comfy_home})
    client = await aiohttp_client(create_app(settings))

    # Transformer-only LoRAs: a chain of LoraLoaderModelOnly; the prompts read the text encoders directly.
    status, job = await _post(client, checkpoint=FLUX, steps=2, loras=[{"id": "ink_flux", "strength": 0.7},
                                                                      {"id": "tone_flux", "strength": 0.3}])
    assert status == 202, job
    graph = Graph((await (await client.get(f"/jobs/{job['id']}")).json())["workflow"])
    chain = graph.of_type("LoraLoaderModelOnly")
    assert [(n.inputs["lora_name"], n.inputs["strength_model"]) for n in chain] == [
        ("ink_flux.safetensors", 0.7), ("tone_flux.safetensors", 0.3)]
    assert not graph.of_type("LoraLoader")
    [clip] = [n.id for n in graph.of_type("DualCLIPLoader")]
    assert {n.inputs["clip"][0] for n in graph.of_type("CLIPTextEncode")} == {clip}
    [shift] = graph.of_type("ModelSamplingFlux")
    assert shift.inputs["model"] == [chain[1].id, 0]  # the sampler's model goes through both
    done = await _wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]  # the fake validates against the recorded object_info
    assert [(u["id"], u["strength"]) for u in done["params"]["loras"]] == [("ink_flux", 0.7), ("tone_flux", 0.3)]
    # Reproduced whole: the same stack read back off the model-only loaders.
    resp = await client.post("/jobs", json={"workflow": done["workflow"]})
    assert resp.status == 202, await resp.text()
    assert [(u["id"], u["strength"]) for u in (await resp.json())["params"]["loras"]] == [
        ("ink_flux", 0.7), ("tone_flux", 0.3)]

    # kohya's Flux LoRA with CLIP-L weights (lora_te1_) in second place: a LoraLoader, and the prompts read its CLIP.
    status, job = await _post(client, checkpoint=FLUX, steps=2, loras=[{"id": "ink_flux", "strength": 0.7},
                                                                      {"id": "spyke_flux", "strength": 0.9}])
    assert status == 202, job
    graph = Graph((await (await client.get(f"/jobs/{job['id']}")).json())["workflow"])
    [full] = graph.of_type("LoraLoader")
    assert (full.inputs["lora_name"], full.inputs["strength_clip"], full.inputs["clip"]) == (
        "spyke_flux.safetensors", 0.9, [clip, 0])
    assert {tuple(n.inputs["clip"]) for n in graph.of_type("CLIPTextEncode")} == {(full.id, 1)}
    done = await _wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    # ... and first in the stack: the template's own loader becomes the LoraLoader, the chain goes on model-only.
    status, job = await _post(client, checkpoint=FLUX, steps=2, loras=[{"id": "spyke_flux", "strength": 0.8},
                                                                      {"id": "tone_flux", "strength": 0.2}])
    assert status == 202, job
    graph = Graph((await (await client.get(f"/jobs/{job['id']}")).json())["workflow"])
    [full] = graph.of_type("LoraLoader")
    [rest] = graph.of_type("LoraLoaderModelOnly")
    assert (full.inputs["lora_name"], full.inputs["clip"], rest.inputs["model"]) == (
        "spyke_flux.safetensors", [clip, 0], [full.id, 0])
    assert {tuple(n.inputs["clip"]) for n in graph.of_type("CLIPTextEncode")} == {(full.id, 1)}
    done = await _wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert [(u["id"], u["strength"]) for u in done["params"]["loras"]] == [("spyke_flux", 0.8), ("tone_flux", 0.2)]
