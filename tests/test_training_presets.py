"""Presets and the dataset quality gate at POST /loras/train (and `sidecar loras train`): a preset fills the
run's values for its family and trainer, every value the request gives wins, the run's params show them;
a set that is not ready is a 400 `dataset_not_ready` listing each finding with its file and fix, before
anything is queued or rented; `force` trains past it and is recorded. The manual's presets table is the data."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.loras.cli import loras
from sidecar.training import presets
from tests.family_headers import SDXL_CHECKPOINT, write_safetensors
from sidecar.likeness.tiny import TINY_MODEL
from tests.likeness_fixtures import BLUE, figure, tiny_likeness_models
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import TRIGGER, client, fake_env, kohya_dir, settings, wait_run  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
CAPTION = f"{TRIGGER}, full body, standing, plain background"


def noise_set(folder: Path, n: int, size: tuple[int, int] = (512, 512), caption: str = CAPTION, seed: int = 0) -> Path:
    """`n` images no two alike (seeded noise: far apart in pHash), captioned with the trigger first."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.random.default_rng(seed + i).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(caption + "\n")
    return folder


def body(folder: Path, **extra) -> dict:
    return {"datasetDir": str(folder), "outputName": "spyke", "steps": 4, "saveEveryNSteps": 2, "engine": "kohya",
            **extra}


async def refused(client, folder: Path, **extra) -> dict:
    resp = await client.post("/loras/train", json=body(folder, **extra))
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "dataset_not_ready", err
    assert (await (await client.get("/loras/runs")).json())["runs"] == []  # nothing queued
    return err


# -- presets

def test_the_manual_s_presets_table_is_the_data() -> None:
    page = (ROOT / "docs" / "training" / "presets.md").read_text(encoding="utf-8")
    assert presets.markdown_table() in page


def test_each_preset_has_values_for_every_family_and_trainer_it_can_train() -> None:
    for trainer, families in presets.TRAINER_FAMILIES.items():
        for family in families:
            for preset in presets.PRESETS:
                v = presets.values(preset, family, trainer)
                assert v.steps > 0 and v.network_dim > 0 and 0 <= v.caption_dropout_rate < 1
                assert (v.text_encoder_lr is None) == (not v.train_text_encoder)
    # ai-toolkit's example config for Flux: linear 16 / 16, lr 1e-4, 2000 steps, dropout 0.05, TE frozen.
    flux = presets.values("character", "flux", "ai-toolkit")
    assert (flux.network_dim, flux.network_alpha, flux.learning_rate, flux.steps, flux.caption_dropout_rate,
            flux.train_text_encoder, flux.repeats) == (16, 16, 1e-4, 2000, 0.05, False, 1)
    # SDXL with kohya: the U-Net only (sd-scripts' advice); a style asks twice the images of a character.
    assert not presets.values("character", "sdxl", "kohya").train_text_encoder
    assert presets.MIN_IMAGES["style"] == 20 and presets.MIN_IMAGES["character"] == presets.MIN_IMAGES["concept"] == 10


async def test_a_preset_fills_the_run_s_params_and_the_request_s_own_values_win(client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 10)
    resp = await client.post("/loras/train", json=body(folder, preset="character", networkDim=8, steps=4))
    assert resp.status == 202, await resp.text()
    params = (await resp.json())["params"]
    want = presets.values("character", "sd15", "kohya")
    assert params["preset"] == "character" and params["force"] is False
    assert params["networkDim"] == 8 and params["steps"] == 4  # given: the request's
    assert params["networkAlpha"] == want.network_alpha and params["learningRate"] == want.learning_rate
    assert params["repeats"] == want.repeats and params["captionDropoutRate"] == want.caption_dropout_rate
    assert params["trainTextEncoder"] is True and params["textEncoderLr"] == want.text_encoder_lr
    assert params["samplePrompts"] and all(p.startswith(f"{TRIGGER}, ") for p in params["samplePrompts"])
    run = (await resp.json())["id"]
    assert (await wait_run(client, run, {"succeeded", "failed"}))["status"] == "succeeded"
    # kohya is given them with its own arguments (the fake trainer parses them as the real one's usage does).
    argv = json.loads(fake_env["argv"].read_text())
    assert "--network_dim=8" in argv and "--text_encoder_lr=5e-05" in argv and "--caption_dropout_rate=0.05" in argv
    assert "--network_train_unet_only" not in argv


async def test_a_style_preset_given_its_own_prompts_keeps_them(client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 20)
    resp = await client.post("/loras/train", json=body(folder, preset="style", samplePrompts=["a red barn"],
                                                        trainTextEncoder=True, textEncoderLr=1e-5))
    assert resp.status == 202, await resp.text()
    params = (await resp.json())["params"]
    assert params["samplePrompts"] == ["a red barn"] and params["trainTextEncoder"] is True
    assert params["textEncoderLr"] == 1e-5 and params["steps"] == 4
    assert params["captionDropoutRate"] == presets.values("style", "sd15", "kohya").caption_dropout_rate
    await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})
    assert "--text_encoder_lr=1e-05" in json.loads(fake_env["argv"].read_text())
    # The style preset's own choice, the U-Net only, is kohya's --network_train_unet_only.
    resp = await client.post("/loras/train", json=body(folder, outputName="style2", preset="style"))
    assert resp.status == 202, await resp.text()
    assert (await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    argv = json.loads(fake_env["argv"].read_text())
    assert "--network_train_unet_only" in argv and "--caption_dropout_rate=0.1" in argv
    # A flat folder is linked in under the preset's repeats.
    assert any("5_spyke_plasma_v1 character" in p.name for p in (tmp_path / "data" / "training").glob("*/img/*"))


# -- the gate

async def test_the_gate_lists_each_problem_with_its_file_and_fix(client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 6)
    Image.new("RGB", (300, 600), (10, 20, 30)).save(folder / "small.png")  # under 512 on its short side
    (folder / "small.txt").write_text(CAPTION)
    (folder / "img01.txt").write_text("full body, standing")  # trigger missing
    (folder / "img02.txt").unlink()  # no caption
    Image.open(folder / "img03.png").resize((520, 520)).save(folder / "img03_copy.png")  # near-duplicate
    (folder / "img03_copy.txt").write_text(CAPTION)
    err = await refused(client, folder)
    found = {(f["check"], f["file"]) for f in err["details"]["findings"]}
    assert ("count", None) in found  # 8 source images, 10 needed
    assert {("size", "small.png"), ("trigger", "img01.png"), ("captions", "img02.png"),
            ("duplicates", "img03_copy.png")} <= found
    assert all(f["fix"] for f in err["details"]["findings"])
    trigger_fix = next(f["fix"] for f in err["details"]["findings"] if f["check"] == "trigger")
    assert TRIGGER in trigger_fix
    assert err["details"]["minImages"] == 10 and err["details"]["minSide"] == 512 and err["details"]["family"] == "sd15"


async def test_too_few_images_for_the_preset_is_refused_and_force_trains_and_is_recorded(
        client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 12)
    err = await refused(client, folder, preset="style")  # a style needs 20
    (count,) = err["details"]["findings"]
    assert count["check"] == "count" and "12 source images" in count["message"] and "20" in count["fix"]
    resp = await client.post("/loras/train", json=body(folder, preset="style", force=True))
    assert resp.status == 202, await resp.text()
    run = await resp.json()
    assert run["params"]["force"] is True and run["params"]["preset"] == "style"
    assert (await wait_run(client, run["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    # The same set is enough for a character (10).
    resp = await client.post("/loras/train", json=body(folder, outputName="spyke2", preset="character"))
    assert resp.status == 202, await resp.text()
    await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})


async def test_an_sdxl_base_asks_1024_px(aiohttp_client, tmp_path, kohya_dir, fake_env) -> None:
    s = Settings(data_dir=tmp_path / "data", engine="embedded", kohya_dir=kohya_dir, checkpoint="sdxl.safetensors",
                 profile="cuda-24gb", device="cuda")  # a machine whose profile trains SDXL
    write_safetensors(s.models_path / "checkpoints" / "sdxl.safetensors", SDXL_CHECKPOINT)
    c = await aiohttp_client(create_app(s, ScriptedBackend()))
    folder = noise_set(tmp_path / "set", 10)  # 512 px: enough for SD 1.5, not for SDXL
    err = await refused(c, folder)
    assert err["details"]["family"] == "sdxl" and err["details"]["minSide"] == 1024
    assert {f["check"] for f in err["details"]["findings"]} == {"size"} and len(err["details"]["findings"]) == 10


async def test_an_unconfirmed_caption_proposal_is_a_finding(client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 10)
    (folder / "captions.csv").write_text("file,framing,pose,background,status\nimg04.png,full body,standing,plain,proposed\n")
    err = await refused(client, folder)
    assert [(f["check"], f["file"]) for f in err["details"]["findings"]] == [("captions", "img04.png")]


async def test_a_stranger_in_the_set_is_refused_when_the_project_has_references(
        aiohttp_client, tmp_path, kohya_dir, fake_env) -> None:
    project = tmp_path / "project"
    models = tiny_likeness_models(tmp_path / "models")
    s = Settings(data_dir=tmp_path / "data", engine="embedded", kohya_dir=kohya_dir, project_root=project,
                 models_dir=models, likeness_model=TINY_MODEL)
    (s.models_path / "checkpoints").mkdir(parents=True)
    (s.models_path / "checkpoints" / s.checkpoint).write_bytes(b"not a real model")
    folder = noise_set(project / "dataset", 10)
    # The reference set: four of the set's own images (the tiny judge's colours-in-place features call
    # the rest of the set alike; a blue figure is someone else).
    (project / "refs").mkdir()
    for image in sorted(folder.glob("*.png"))[:4]:
        shutil.copy(image, project / "refs" / image.name)
    (project / "character.toml").write_text(f'trigger = "{TRIGGER}"\nreferences = ["refs/*.png"]\n')
    figure(BLUE, seed=7, size=(512, 512)).save(folder / "stranger.png")
    (folder / "stranger.txt").write_text(CAPTION)
    c = await aiohttp_client(create_app(s, ScriptedBackend()))
    err = await refused(c, folder)
    assert [(f["check"], f["file"]) for f in err["details"]["findings"]] == [("likeness", "stranger.png")]
    (folder / "stranger.png").unlink()
    resp = await c.post("/loras/train", json=body(folder))
    assert resp.status == 202, await resp.text()  # the character alone passes
    await wait_run(c, (await resp.json())["id"], {"succeeded", "failed"})


async def test_the_cli_prints_the_findings_and_exits_non_zero(client, tmp_path, fake_env) -> None:
    folder = noise_set(tmp_path / "set", 3)
    url = str(client.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, loras, ["train", str(folder), "--name", "spyke",
                                                                 "--preset", "character", "--url", url],
                                     env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "dataset_not_ready" in result.output and "3 source images" in result.output
    assert "fix: add images until there are at least 10" in result.output and "--force" in result.output


@pytest.mark.parametrize("preset", [None, "concept"])
async def test_a_ready_set_passes_the_gate_without_force(client, tmp_path, fake_env, preset) -> None:
    folder = noise_set(tmp_path / "set", 10, size=(512, 640))  # any shape: the short side counts
    resp = await client.post("/loras/train", json=body(folder, **({"preset": preset} if preset else {})))
    assert resp.status == 202, await resp.text()
    await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})


def test_the_embedded_trainer_says_which_preset_values_it_does_not_apply() -> None:
    from sidecar.training.wire import TrainRequest

    req = TrainRequest(datasetDir="/x", outputName="s", preset="style")
    said = presets.embedded_warnings(presets.apply(req, "sd15", "embedded", TRIGGER))
    assert any("captionDropoutRate 0.1" in w for w in said) and any("trainTextEncoder false" in w for w in said)
    assert presets.embedded_warnings(req) == []  # no preset, nothing asked beyond the canonical config


async def test_the_estimate_counts_the_preset_s_steps(client, tmp_path) -> None:
    folder = noise_set(tmp_path / "set", 2)  # the plan does not judge the set; the run would
    resp = await client.post("/loras/estimate", json={"datasetDir": str(folder), "outputName": "s", "preset": "style"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["steps"] == presets.values("style", "sd15", "kohya").steps
    resp = await client.post("/loras/estimate", json={"datasetDir": str(folder), "outputName": "s", "preset": "style",
                                                      "steps": 300})
    assert (await resp.json())["steps"] == 300


async def test_a_kohya_layout_is_checked_folder_by_folder_and_counted_over_all(client, tmp_path, fake_env) -> None:
    root = tmp_path / "train"
    noise_set(root / "img" / f"10_{TRIGGER} character", 6)
    noise_set(root / "img" / f"5_{TRIGGER} outfit", 5, seed=100)
    (root / "img" / f"5_{TRIGGER} outfit" / "img03.txt").write_text("outfit, standing")
    err = await refused(client, root)
    assert [(f["check"], f["file"]) for f in err["details"]["findings"]] == [
        ("trigger", f"5_{TRIGGER} outfit/img03.png")]  # 11 images in all: enough
    (root / "img" / f"5_{TRIGGER} outfit" / "img03.txt").write_text(CAPTION)
    resp = await client.post("/loras/train", json=body(root))
    assert resp.status == 202, await resp.text()
    await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})


def test_dataset_check_with_a_preset_judges_as_the_gate(tmp_path) -> None:
    from sidecar.cli import main

    folder = noise_set(tmp_path / "set", 12, size=(512, 640), caption=f"{TRIGGER}, any caption at all")
    env = {"SIDECAR_TRIGGER_WORD": TRIGGER, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    plain = CliRunner().invoke(main, ["dataset", "check", str(folder), "--json"], env=env)
    assert plain.exit_code == 1  # the artist's own rules: 15-20 images, 512x512, four caption parts
    ok = CliRunner().invoke(main, ["dataset", "check", str(folder), "--preset", "character", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    style = CliRunner().invoke(main, ["dataset", "check", str(folder), "--preset", "style", "--json"], env=env)
    assert style.exit_code == 1
    assert [e["check"] for e in json.loads(style.output)["errors"]] == ["count"]
    sdxl = CliRunner().invoke(main, ["dataset", "check", str(folder), "--preset", "character", "--family", "sdxl",
                                     "--json"], env=env)
    assert {e["check"] for e in json.loads(sdxl.output)["errors"]} == {"size"}
