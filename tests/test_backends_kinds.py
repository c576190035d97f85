"""Every kind of `[[backends]]` table end to end: the embedded engine and a managed ComfyUI (the fake
behind a `main.py`, started by the daemon) each next to an attached ComfyUI, jobs sent to each by
`where` and landing as with one backend; and img2img's init image reaching a remote ComfyUI through
`/upload/image`, its LoadImage loading the name the upload answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from tests.conftest_comfy import free_port, python_wrapper
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET
from tests.fake_comfyui import DEFAULT_MODELS, FakeComfyUI, make_comfy_home
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status
from tests.test_backends_routing import fakes, overlaps, pool_settings, start_fake  # noqa: F401  (fixture)
from tests.test_img2img import init_png

SMALL = {"resolution": {"width": 64, "height": 96}, "steps": 2}


async def run(client, **body) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **SMALL, **body})
    assert resp.status == 202, await resp.text()
    done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["status"] == "succeeded", done
    return done


async def image_size(client, job: dict) -> tuple[int, int]:
    full = await (await client.get(f"/jobs/{job['id']}")).json()
    resp = await client.get(full["output"]["url"])
    assert resp.status == 200 and resp.content_type == "image/png"
    path = Path(full["outputFile"]) if full.get("outputFile") else None
    if path is not None:
        assert path.is_file()
    from io import BytesIO

    with Image.open(BytesIO(await resp.read())) as img:
        return img.size


def loaded_image(fake: FakeComfyUI, prompt_id: str) -> str:
    ran = fake.history[prompt_id]["prompt"][2]
    return next(n["inputs"]["image"] for n in ran.values() if n["class_type"] == "LoadImage")


async def test_init_images_are_uploaded_to_the_remote_comfyui_the_job_routes_to(aiohttp_client, fakes, tmp_path):
    client = await aiohttp_client(create_app(pool_settings(tmp_path, fakes), ScriptedBackend()))
    desk, attic = fakes["desk"], fakes["attic"]
    init = init_png(tmp_path / "init.png")
    by_path = await run(client, where="attic", initImagePath=str(init), denoise=0.5, steps=3)
    assert by_path["backend"] == "attic" and by_path["workflowTemplate"] == "img2img"
    name = loaded_image(attic, by_path["promptId"])
    assert name.startswith("sidecar-init-") and attic.uploads == [name]  # sent by /upload/image, then loaded
    assert (attic.base_dir / "input" / name).is_file()

    # The image of a job that ran on the attic, as the init image of one routed to the desk.
    by_job = await run(client, where="desk", initJobId=by_path["id"], denoise=0.4, steps=3)
    assert by_job["backend"] == "desk"
    name = loaded_image(desk, by_job["promptId"])
    assert name.startswith("sidecar-init-") and desk.uploads == [name] and (desk.base_dir / "input" / name).is_file()
    assert attic.uploads == [loaded_image(attic, by_path["promptId"])]  # nothing more went to the attic
    assert attic.prompt_posts == 1 and desk.prompt_posts == 1


@pytest.mark.engine
async def test_an_embedded_engine_and_an_attached_comfyui_take_the_jobs_sent_to_each(
        aiohttp_client, tmp_path: Path, engine_models: Path) -> None:
    desk = await start_fake(tmp_path, "desk", {**DEFAULT_MODELS, "checkpoints": [TINY_CHECKPOINT]}, step_delay=0.0,
                            device="cuda")
    try:
        settings = Settings(
            data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
            checkpoint=TINY_CHECKPOINT, controlnet_model=TINY_CONTROLNET, steps=2, history_poll_interval=0.2,
            backend_probe_interval=0.5, default_where="laptop",
            backends=[BackendSpec(name="laptop", kind="embedded"),
                      BackendSpec(name="desk", kind="comfyui", url=desk.url, profile="cuda-24gb", local=False)])
        client = await aiohttp_client(create_app(settings))
        health = await (await client.get("/health")).json()
        kinds = {b["name"]: (b["kind"], b["local"], b["state"]) for b in health["backends"]}
        assert kinds == {"laptop": ("embedded", True, "up"), "desk": ("comfyui attached", False, "up")}

        local = await run(client)  # default_where = laptop: the embedded engine draws it
        assert (local["backend"], local["device"]) == ("laptop", "cpu") and local["promptId"] is None
        assert await image_size(client, local) == (64, 96)
        remote = await run(client, where="desk")
        assert remote["backend"] == "desk" and remote["promptId"] in desk.history
        assert await image_size(client, remote) == (64, 96)
        assert desk.prompt_posts == 1 and overlaps(desk) == []
    finally:
        await desk.stop()


async def test_a_managed_comfyui_and_an_attached_one_take_the_jobs_sent_to_each(
        aiohttp_client, tmp_path: Path, fake_comfy_install: Path) -> None:
    desk = await start_fake(tmp_path, "desk", DEFAULT_MODELS, step_delay=0.0, device="cuda")
    try:
        settings = Settings(
            data_dir=tmp_path / "data", engine="embedded", device="cpu", history_poll_interval=0.2,
            comfyui_start_timeout=30, comfyui_unavailable_deadline=30, backend_probe_interval=0.3,
            default_where="laptop",
            backends=[BackendSpec(name="laptop", kind="comfyui", dir=fake_comfy_install,
                                  python=python_wrapper(tmp_path / "venv-bin"), port=free_port()),
                      BackendSpec(name="desk", kind="comfyui", url=desk.url, profile="cuda-24gb", local=False)])
        client = await aiohttp_client(create_app(settings))
        health = await (await client.get("/health")).json()
        kinds = {b["name"]: (b["kind"], b["local"]) for b in health["backends"]}
        assert kinds == {"laptop": ("comfyui managed", True), "desk": ("comfyui attached", False)}

        local = await run(client)  # waits for the managed ComfyUI to come up, then runs there
        assert local["backend"] == "laptop" and local["promptId"] not in desk.history
        assert await image_size(client, local) == (64, 96)
        remote = await run(client, where="desk")
        assert remote["backend"] == "desk" and remote["promptId"] in desk.history
        assert await image_size(client, remote) == (64, 96)
        laptop = next(b for b in (await (await client.get("/health")).json())["backends"] if b["name"] == "laptop")
        assert laptop["state"] == "up" and laptop["url"] == f"http://127.0.0.1:{settings.backends[0].port}"
    finally:
        await desk.stop()
