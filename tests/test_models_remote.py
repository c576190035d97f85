"""GET /models when the models are only known remotely: an attached ComfyUI's /object_info names them
(its loader nodes' enums), but their files are on another machine, so no header can be read here. Each is
still listed: a diffusion model (UNETLoader's folder) as `flux`, saying how that was judged; anything else
`unknown` with the reason; each with the backends that can run it. Never an error."""

from __future__ import annotations

from sidecar.api.app import create_app
from tests.family_headers import FLUX_DIFFUSION_MODEL, SD15_LORA, SDXL_CHECKPOINT, write_safetensors


def _install(comfy_home) -> None:
    models = comfy_home / "models"
    write_safetensors(models / "checkpoints" / "animagine-xl.safetensors", SDXL_CHECKPOINT)
    write_safetensors(models / "diffusion_models" / "flux1-dev-fp8.safetensors", FLUX_DIFFUSION_MODEL)
    write_safetensors(models / "loras" / "spyke.safetensors", SD15_LORA)


def _by_name(body: dict) -> dict[str, dict]:
    return {m["name"]: m for folder in ("checkpoints", "loras", "diffusionModels") for m in body[folder]}


async def test_models_only_an_attached_comfyui_has_are_listed_with_what_is_knowable(
        aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    _install(comfy_home)
    fake_comfy.models_endpoint = False  # an older ComfyUI: the names come from /object_info's loader enums
    client = await aiohttp_client(create_app(comfy_settings.model_copy(update={"profile": "cuda-24gb"})))

    resp = await client.get("/models?sha256=1")
    assert resp.status == 200, await resp.text()
    models = _by_name(await resp.json())
    flux = models["flux1-dev-fp8.safetensors"]
    assert flux["family"] == "flux" and flux["sizeBytes"] is None and flux["sha256"] is None
    assert "not read from its header" in flux["familyNote"] and "UNETLoader" in flux["familyNote"]
    assert flux["backends"] == ["local"]  # cuda-24gb runs Flux
    sdxl = models["animagine-xl.safetensors"]  # an SDXL file, but nothing here can tell
    assert sdxl["family"] == "unknown" and "cannot be read" in sdxl["familyNote"]
    assert models["spyke.safetensors"]["family"] == "unknown"
    assert fake_comfy.object_info_requests  # the names did come from /object_info


async def test_the_laptop_lists_a_remote_flux_model_with_no_backend_to_run_it(
        aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    _install(comfy_home)
    client = await aiohttp_client(create_app(comfy_settings))  # m1pro-16gb: SD 1.5 only
    models = _by_name(await (await client.get("/models")).json())
    assert (models["flux1-dev-fp8.safetensors"]["family"], models["flux1-dev-fp8.safetensors"]["backends"]) == (
        "flux", [])
    # An unknown family is held to the base family, which the laptop runs: it may go there.
    assert models["animagine-xl.safetensors"]["backends"] == ["local"]
    # A job on the Flux model is refused as GET /models foretold, naming the family.
    resp = await client.post("/jobs", json={"prompt": "x", "checkpoint": "flux1-dev-fp8.safetensors"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "family_not_supported"


async def test_a_model_a_pool_member_lists_but_this_machine_lacks_is_judged_not_misread(tmp_path) -> None:
    # A pool's home backend has the model folders; a name only a remote member lists is not in them.
    from sidecar.jobs.families import NOT_HERE, ModelFamilies
    from tests.scripted_backend import ScriptedBackend

    local = tmp_path / "local"
    folders = {"checkpoints": local / "checkpoints", "diffusion_models": local / "diffusion_models"}
    for d in folders.values():
        d.mkdir(parents=True)
    backend = ScriptedBackend(folders=folders)
    names = {"checkpoints": ["animagine-xl.safetensors"], "diffusion_models": ["flux1-dev.safetensors"]}

    async def remote_names(folder: str) -> list[str]:  # the pool's catalog: every member's last listing
        return names.get(folder, [])

    backend.list_models = remote_names  # type: ignore[method-assign]
    families = ModelFamilies(backend)
    [checkpoint] = await families.listing("checkpoints")
    assert (checkpoint.reading.family, checkpoint.reading.reason, checkpoint.local) == ("unknown", NOT_HERE, False)
    [flux] = await families.listing("diffusion_models")
    assert (flux.reading.family, flux.size_bytes, flux.local) == ("flux", None, False)
