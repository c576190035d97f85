"""Print upscale (issue 14): `upscaleModel` on `POST /jobs` adds ComfyUI's UpscaleModelLoader +
ImageUpscaleWithModel after the image, on both engines. The embedded engine runs tiny random-weight
ESRGAN / Real-ESRGAN models (real torch, CPU) tile by tile; the tiled result matches the whole-image one.
ComfyUI (the fake, with the two nodes' /object_info as recorded) gets the nodes and the daemon downloads
both images. The job's image keeps the generation size; the upscaled one is `scale` times larger.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from click.testing import CliRunner

from pipeline_stage.cli import main as generate
from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.engine.sr_arch import UnsupportedUpscaler, build_upscaler
from sidecar.engine.upscale import load_upscaler, upscale_image, upscale_tensor
from tests.conftest_engine import TINY_CHECKPOINT
from tests.pipeline_daemon import DaemonThread, copy_example
from tests.test_img2img import finished, submit
from tests.upscale_fixtures import (
    TINY_UPSCALER,
    as_old_esrgan,
    comfyui_loads,
    rrdbnet_state,
    srvgg_state,
    write_upscaler,
)

SIZE = (64, 96)  # the jobs' width, height (tests.test_img2img.SIZE)


# -- the networks and the tiling

@pytest.mark.parametrize(("state", "scale"), [
    (rrdbnet_state(), 4),
    (rrdbnet_state(ups=2, unshuffle=2), 2),  # Real-ESRGAN x2: folds 2x2 pixels first
    (srvgg_state(), 4),
], ids=["esrgan-x4", "realesrgan-x2", "srvgg-x4"])
def test_tiled_upscale_matches_the_whole_image_and_is_scale_times_larger(state, scale: int) -> None:
    up = build_upscaler(state)
    assert up.scale == scale
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    whole = upscale_tensor(up.net, x, up.scale, tile=0, overlap=0)
    tiles: list[tuple[int, int]] = []
    tiled = upscale_tensor(up.net, x, up.scale, tile=24, overlap=8, on_tile=lambda d, t: tiles.append((d, t)))
    assert whole.shape == tiled.shape == (1, 3, 40 * scale, 56 * scale)
    assert tiles[-1][0] == tiles[-1][1] > 1  # it really ran in tiles
    diff = (whole - tiled).abs()
    assert float(diff.mean()) < 5e-3 and float(diff.max()) < 0.08, (float(diff.mean()), float(diff.max()))
    assert float(whole.std()) > 0.01  # not a flat image that would match anything


def test_original_esrgan_keys_load_as_the_same_network() -> None:
    sd = rrdbnet_state(blocks=2, seed=3)
    x = torch.rand(1, 3, 12, 12)
    new, old = build_upscaler(sd), build_upscaler(as_old_esrgan(sd))
    assert old.architecture == "ESRGAN" and old.scale == 4
    assert torch.equal(new.net(x), old.net(x))


def test_model_files_load_and_an_image_of_any_size_upscales(tmp_path: Path) -> None:
    pth = write_upscaler(tmp_path, "2x-real.pth", rrdbnet_state(ups=2, unshuffle=2))  # under params_ema
    st = write_upscaler(tmp_path, "4x-compact.safetensors", srvgg_state())
    odd = Image.fromarray(np.random.default_rng(0).integers(0, 255, (21, 30, 3), dtype=np.uint8))
    assert upscale_image(load_upscaler(pth), odd, tile=16, overlap=4).size == (60, 42)
    assert upscale_image(load_upscaler(st), odd, tile=0, overlap=0).size == (120, 84)


def test_a_state_dict_of_another_architecture_is_refused_naming_its_keys() -> None:
    with pytest.raises(UnsupportedUpscaler, match="layers.0.attn"):
        build_upscaler({"layers.0.attn.weight": torch.zeros(2, 2)})


def test_a_cancel_stops_between_tiles() -> None:
    up = build_upscaler(srvgg_state())
    with pytest.raises(InterruptedError):
        upscale_tensor(up.net, torch.rand(1, 3, 32, 32), 4, tile=16, overlap=4, should_stop=lambda: True)


# -- through the daemon: the embedded engine

@pytest.fixture(scope="module")
def upscale_models(engine_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny set (linked, not copied) plus models/upscale_models/ with a tiny ESRGAN."""
    root = tmp_path_factory.mktemp("upscale-models")
    for entry in engine_models.iterdir():
        if entry.is_dir():
            (root / entry.name).mkdir()
            for item in entry.iterdir():
                os.symlink(item, root / entry.name / item.name)
        else:
            os.symlink(entry, root / entry.name)
    # The example chapter asks for the character's LoRA by name; the tiny one stands in for it.
    os.symlink(engine_models / "loras" / "tiny-lora.safetensors", root / "loras" / "spyke_plasma_v1.safetensors")
    write_upscaler(root / "upscale_models")
    return root


@pytest.fixture
async def engine_client(aiohttp_client, tmp_path: Path, upscale_models: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=upscale_models,
                        checkpoint=TINY_CHECKPOINT, steps=2, upscale_tile=32, upscale_tile_overlap=8)
    return await aiohttp_client(create_app(settings))


async def png(client, url: str) -> Image.Image:
    resp = await client.get(url)
    assert resp.status == 200 and resp.content_type == "image/png"
    img = Image.open(io.BytesIO(await resp.read()))
    img.load()
    return img


@pytest.mark.engine
async def test_an_embedded_job_saves_its_image_and_the_upscaled_copy(engine_client, upscale_models: Path) -> None:
    job = await submit(engine_client, seed=5, upscaleModel=TINY_UPSCALER)
    assert job["params"]["upscaleModel"] == TINY_UPSCALER
    done = await finished(engine_client, job["id"])
    kinds = {n["class_type"] for n in done["workflow"].values()}
    assert {"UpscaleModelLoader", "ImageUpscaleWithModel"} <= kinds
    assert done["upscaled"]["url"] == f"/jobs/{job['id']}/upscaled"
    image = await png(engine_client, done["output"]["url"])
    big = await png(engine_client, done["upscaled"]["url"])
    assert image.size == SIZE and big.size == (SIZE[0] * 4, SIZE[1] * 4)
    # That image through that model (tiled as the settings say), not another picture.
    again = upscale_image(load_upscaler(upscale_models / "upscale_models" / TINY_UPSCALER), image, tile=32, overlap=8)
    assert np.abs(np.asarray(big, dtype=np.int16) - np.asarray(again, dtype=np.int16)).max() <= 1


@pytest.mark.engine
async def test_a_job_without_upscale_has_none(engine_client) -> None:
    done = await finished(engine_client, (await submit(engine_client, seed=1))["id"])
    assert done["upscaled"] is None
    resp = await engine_client.get(f"/jobs/{done['id']}/upscaled")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_an_unknown_upscale_model_is_a_400_naming_it(engine_client) -> None:
    answer = await submit(engine_client, 400, upscaleModel="4x-missing.pth")
    assert answer["error"]["code"] == "upscale_model_not_found"
    assert "4x-missing.pth" in answer["error"]["message"]
    assert answer["error"]["details"]["available"] == [TINY_UPSCALER]
    bad = await submit(engine_client, 400, upscaleModel="../4x.pth")
    assert bad["error"]["code"] == "invalid_field" and bad["error"]["details"]["field"] == "upscaleModel"


@pytest.mark.engine
async def test_an_image_already_rendered_is_upscaled_without_rendering_it_again(engine_client) -> None:
    first = await finished(engine_client, (await submit(engine_client, seed=4))["id"])
    resp = await engine_client.post("/jobs", json={"upscaleModel": TINY_UPSCALER, "initJobId": first["id"]})
    job = await resp.json()
    assert resp.status == 202, job
    assert job["workflowTemplate"] == "upscale" and job["params"]["initJobId"] == first["id"]
    done = await finished(engine_client, job["id"])
    assert [n["class_type"] for n in done["workflow"].values()] == [
        "LoadImage", "UpscaleModelLoader", "ImageUpscaleWithModel", "SaveImage"]
    assert (await png(engine_client, done["output"]["url"])).size == (SIZE[0] * 4, SIZE[1] * 4)
    retried = await (await engine_client.post(f"/jobs/{job['id']}/retry")).json()
    assert retried["workflowTemplate"] == "upscale" and retried["retryOf"] == job["id"]
    refused = await engine_client.post("/jobs", json={"upscaleModel": TINY_UPSCALER, "initJobId": first["id"],
                                                      "steps": 3})
    assert refused.status == 400 and "takes no other parameters" in (await refused.json())["error"]["message"]


# -- through the daemon: ComfyUI (the fake, replaying the recorded protocol)

async def test_comfyui_gets_the_upscale_nodes_and_both_images_come_back(aiohttp_client, fake_comfy,
                                                                       comfy_settings) -> None:
    write_upscaler(fake_comfy.base_dir / "models" / "upscale_models", "4x-UltraSharp.pth")
    client = await aiohttp_client(create_app(comfy_settings))
    missing = await submit(client, 400, upscaleModel="4x-AnimeSharp.pth")
    assert missing["error"]["details"]["available"] == ["4x-UltraSharp.pth"]
    job = await submit(client, seed=2, steps=2, upscaleModel="4x-UltraSharp.pth")
    done = await finished(client, job["id"], timeout=30)
    ran = fake_comfy.history[done["promptId"]]["prompt"][2]
    loader = next(nid for nid, n in ran.items() if n["class_type"] == "UpscaleModelLoader")
    upscaler = next(n for n in ran.values() if n["class_type"] == "ImageUpscaleWithModel")
    decode = next(nid for nid, n in ran.items() if n["class_type"] == "VAEDecode")
    assert ran[loader]["inputs"] == {"model_name": "4x-UltraSharp.pth"}
    assert upscaler["inputs"] == {"upscale_model": [loader, 0], "image": [decode, 0]}
    assert (await png(client, done["output"]["url"])).size == SIZE
    assert (await png(client, done["upscaled"]["url"])).size == (SIZE[0] * 4, SIZE[1] * 4)


async def test_the_test_upscalers_are_files_comfyuis_loader_accepts_and_the_engine_runs(
        aiohttp_client, fake_comfy, comfy_settings, tmp_path: Path) -> None:
    # The real UpscaleModelLoader (spandrel) builds ESRGAN blocks with 32 growth channels whatever the
    # file holds: the suite's upscalers must be files it accepts, and the embedded engine loads them too.
    for state, scale in ((None, 4), (rrdbnet_state(ups=2, unshuffle=2), 2), (srvgg_state(), 4)):
        path = write_upscaler(tmp_path / "models", f"{scale}x-{len(state or {})}.pth", state)
        assert comfyui_loads(path) == scale and load_upscaler(path).scale == scale
    # A file it refuses fails the job with its message, as the real server does; the daemon says so.
    write_upscaler(fake_comfy.base_dir / "models" / "upscale_models", "4x-grow4.pth", as_old_esrgan(rrdbnet_state(grow=4)))
    client = await aiohttp_client(create_app(comfy_settings))
    job = await submit(client, seed=2, steps=2, upscaleModel="4x-grow4.pth")
    with pytest.raises(AssertionError, match="UpscaleModelLoader"):
        await finished(client, job["id"], timeout=30)
    failed = await (await client.get(f"/jobs/{job['id']}")).json()
    assert failed["error"]["code"] == "execution_error" and "size mismatch" in failed["error"]["message"]


# -- the page pipeline: generate --upscale

@pytest.mark.engine
def test_generate_upscale_writes_the_print_beside_raw_never_into_it(tmp_path: Path, upscale_models: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=upscale_models,
                        checkpoint=TINY_CHECKPOINT, upscale_tile=48, upscale_tile_overlap=8)
    daemon = DaemonThread(settings, None).start()
    try:
        project = copy_example(tmp_path / "project")
        base = ["--comfyui", "--root", str(project), "--daemon", daemon.url]
        size = ["--steps", "2", "--width", "64", "--height", "96", "--seed", "9"]
        first = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", *size, "--upscale", TINY_UPSCALER])
        assert first.exit_code == 0, first.output + first.stderr
        chapter = project / "output/ch-01"
        assert sorted(p.name for p in (chapter / "raw").glob("*.png")) == ["ch01_p001_v1.png"]
        with Image.open(chapter / "print/ch01_p001_v1.png") as printed, Image.open(chapter / "raw/ch01_p001_v1.png") as raw:
            assert raw.size == (64, 96) and printed.size == (256, 384) and printed.mode == "RGB"
            assert TINY_UPSCALER in printed.text["parameters"]
        [entry] = json.loads((chapter / "generation-log.json").read_text())
        assert entry["upscaleModel"] == TINY_UPSCALER and entry["printFile"] == "output/ch-01/print/ch01_p001_v1.png"
        workflow = json.loads((chapter / "raw/ch01_p001_v1.workflow.json").read_text())
        assert "ImageUpscaleWithModel" in {n["class_type"] for n in workflow.values()}

        # --reproduce of that version makes the next version and its print again, pixel for pixel.
        again = CliRunner().invoke(generate, [*base, "--reproduce", str(chapter / "raw/ch01_p001_v1.workflow.json")])
        assert again.exit_code == 0, again.output + again.stderr
        with Image.open(chapter / "print/ch01_p001_v1.png") as a, Image.open(chapter / "print/ch01_p001_v2.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
        # Without --upscale: no print, nothing new in print/.
        plain = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", *size])
        assert plain.exit_code == 0, plain.output + plain.stderr
        assert sorted(p.name for p in (chapter / "print").iterdir()) == ["ch01_p001_v1.png", "ch01_p001_v2.png"]
        log = json.loads((chapter / "generation-log.json").read_text())
        assert log[2]["printFile"] is None and log[2]["upscaleModel"] is None
        # A version made without one gets its print by reproducing it with --upscale.
        late = CliRunner().invoke(generate, [*base, "--reproduce", str(chapter / "raw/ch01_p001_v3.workflow.json"),
                                             "--upscale", TINY_UPSCALER])
        assert late.exit_code == 0, late.output + late.stderr
        with Image.open(chapter / "print/ch01_p001_v4.png") as p4, Image.open(chapter / "raw/ch01_p001_v3.png") as v3:
            assert p4.size == (256, 384) and v3.size == (64, 96)

        # Or print a version as it was rendered, without rendering it again: v3 gets its print, v3 stays.
        before = (chapter / "raw/ch01_p001_v3.png").read_bytes()
        printed = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", "--version", "3",
                                                "--upscale", TINY_UPSCALER])
        assert printed.exit_code == 0, printed.output + printed.stderr
        assert (chapter / "raw/ch01_p001_v3.png").read_bytes() == before
        assert sorted(p.name for p in (chapter / "raw").glob("*.png"))[-1] == "ch01_p001_v4.png"  # nothing new
        with Image.open(chapter / "print/ch01_p001_v3.png") as p3, Image.open(chapter / "raw/ch01_p001_v3.png") as v3:
            assert p3.size == (256, 384) and "Seed: 9" in p3.text["parameters"] and TINY_UPSCALER in p3.text["parameters"]
            again3 = upscale_image(load_upscaler(upscale_models / "upscale_models" / TINY_UPSCALER), v3, tile=48,
                                   overlap=8)
            assert np.abs(np.asarray(p3, dtype=np.int16) - np.asarray(again3, dtype=np.int16)).max() <= 1
        log = json.loads((chapter / "generation-log.json").read_text())
        assert log[2]["upscaleModel"] == TINY_UPSCALER and log[2]["printFile"] == "output/ch-01/print/ch01_p001_v3.png"
        twice = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", "--version", "3",
                                              "--upscale", TINY_UPSCALER])
        assert twice.exit_code == 2 and "never overwritten" in twice.stderr
        alone = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", "--version", "3"])
        assert alone.exit_code == 2 and "--upscale" in alone.stderr

        refused = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", "--drafts", "3",
                                                "--upscale", TINY_UPSCALER])
        assert refused.exit_code == 2 and "drafts are not printed" in refused.stderr
        missing = CliRunner().invoke(generate, [*base, "-c", "1", "--page", "1", *size, "--upscale", "8x-nope.pth"])
        assert missing.exit_code == 2 and "8x-nope.pth" in missing.stderr
    finally:
        daemon.stop()


# -- sidecar doctor

def test_doctor_says_where_upscale_models_go_and_lists_them(tmp_path: Path) -> None:
    from tests.test_doctor import as_json, doctor

    home, models = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    (models / "checkpoints").mkdir(parents=True)
    args = ("--json", "--engine", "embedded", "--models-dir", str(models))
    checks, _ = as_json(doctor(home, *args))
    line = checks["upscale models"]
    assert line["status"] == "warn" and line["required"] is False
    assert str(models / "upscale_models") in line["fix"] and "--upscale" in line["detail"]
    write_upscaler(models / "upscale_models", "4x-compact.safetensors", srvgg_state())
    checks, _ = as_json(doctor(home, *args))
    assert checks["upscale models"]["status"] == "ok" and "4x-compact.safetensors" in checks["upscale models"]["detail"]


async def test_comfyui_upscales_an_image_it_is_given(aiohttp_client, fake_comfy, comfy_settings, tmp_path) -> None:
    write_upscaler(fake_comfy.base_dir / "models" / "upscale_models", "2x-Real.pth",
                   rrdbnet_state(ups=2, unshuffle=2))  # Real-ESRGAN x2: the loader reads the scale off it
    source = tmp_path / "page.png"
    Image.new("RGB", (40, 56), (200, 120, 40)).save(source)
    client = await aiohttp_client(create_app(comfy_settings))
    resp = await client.post("/jobs", json={"upscaleModel": "2x-Real.pth", "initImagePath": str(source)})
    assert resp.status == 202, await resp.json()
    done = await finished(client, (await resp.json())["id"], timeout=30)
    ran = fake_comfy.history[done["promptId"]]["prompt"][2]
    name = next(n["inputs"]["image"] for n in ran.values() if n["class_type"] == "LoadImage")
    assert (fake_comfy.base_dir / "input" / name).is_file()  # the daemon placed the image where ComfyUI loads it
    assert (await png(client, done["output"]["url"])).size == (80, 112) and done["upscaled"] is None


@pytest.mark.engine
async def test_an_upscaler_the_engine_cannot_run_fails_the_job_before_it_renders(engine_client, upscale_models) -> None:
    weird = upscale_models / "upscale_models" / "4x-swinir.safetensors"
    from safetensors.torch import save_file

    save_file({"layers.0.residual_group.blocks.0.norm1.weight": torch.zeros(4)}, str(weird))
    try:
        job = await submit(engine_client, seed=1, steps=2, upscaleModel=weird.name)
        for _ in range(2400):
            answer = await (await engine_client.get(f"/jobs/{job['id']}")).json()
            if answer["status"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        assert answer["status"] == "failed" and answer["error"]["code"] == "upscale_model_unsupported"
        assert "SRVGGNetCompact" in answer["error"]["message"] and answer["progress"]["step"] == 0  # never sampled
    finally:
        weird.unlink()
