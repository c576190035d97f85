"""The embedded engine renders our filled workflows with real torch on tiny random models (CPU):
sizes, determinism, LoRA strength and swapping, ControlNet, denoise, cancel, failure codes."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sidecar.errors import JobCancelled, JobFailed, NodeNotSupported, SamplerNotSupported
from tests.conftest_engine import TINY_CHECKPOINT, fill

pytestmark = pytest.mark.engine


async def test_job_writes_a_png_of_the_requested_size_with_its_workflow(render) -> None:
    wf = fill("txt2img-lora", width=512, height=768, steps=20, sampler_name="euler_ancestral")
    ran = await render(wf)
    with Image.open(ran.path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (512, 768)
        assert json.loads(img.info["prompt"]) == wf  # the image says how it was made, where ComfyUI puts it
    assert ran.progress == [(i, 20) for i in range(1, 21)]
    assert not list(ran.path.parent.glob(".*.tmp"))


async def test_same_seed_is_pixel_identical_and_another_seed_differs(render) -> None:
    first = (await render(fill("txt2img", seed=7, sampler_name="euler_ancestral"))).pixels
    again = (await render(fill("txt2img", seed=7, sampler_name="euler_ancestral"))).pixels
    other = (await render(fill("txt2img", seed=8, sampler_name="euler_ancestral"))).pixels
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


async def test_seeds_take_comfyuis_64_bit_range_and_its_noise(render) -> None:
    from sidecar.engine.render import initial_noise

    top = (await render(fill("txt2img", seed=2**64 - 1))).pixels
    # ComfyUI draws the initial noise with torch.manual_seed(seed) on the CPU; torch's CPU generator
    # keys on the low 32 bits, so ComfyUI gives these two seeds the same image, and so must we.
    same = (await render(fill("txt2img", seed=2**32 - 1))).pixels
    assert np.array_equal(top, same)
    comfy = torch.randn((1, 4, 12, 8), generator=torch.manual_seed(2**64 - 1), device="cpu")
    assert torch.equal(initial_noise(2**64 - 1, (1, 4, 12, 8)), comfy)


async def test_lora_strength_zero_is_no_lora_and_one_changes_the_image(render, engine) -> None:
    base = (await render(fill("txt2img", seed=3))).pixels
    zero = (await render(fill("txt2img-lora", seed=3, lora_strength=0.0))).pixels
    one = (await render(fill("txt2img-lora", seed=3, lora_strength=1.0))).pixels
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, one)
    assert (await engine.health()).extra["loaded"]["loras"] == ["tiny-lora.safetensors"]


async def test_lora_swaps_without_reloading_the_base_and_restores_it_exactly(render, engine) -> None:
    before = (await render(fill("txt2img", seed=5))).pixels
    half = (await render(fill("txt2img-lora", seed=5, lora_strength=0.5))).pixels
    full = (await render(fill("txt2img-lora", seed=5, lora_strength=1.0))).pixels
    after = (await render(fill("txt2img", seed=5))).pixels
    assert not np.array_equal(half, full)
    assert np.array_equal(before, after)  # unmerging left the base weights bit-for-bit as loaded
    loaded = (await engine.health()).extra["loaded"]
    assert loaded["baseLoads"] == 1 and loaded["checkpoint"] == TINY_CHECKPOINT and loaded["loras"] == []


async def test_emphasis_and_prompts_longer_than_one_clip_window_render(render) -> None:
    plain = (await render(fill("txt2img", seed=6, prompt_text="spyke_plasma_v1, standing"))).pixels
    weighted = (await render(fill("txt2img", seed=6, prompt_text="(spyke_plasma_v1:1.4), standing"))).pixels
    long_text = ", ".join(["spyke_plasma_v1 standing on a rooftop at night"] * 6)  # > 75 tokens: 2+ chunks
    long = (await render(fill("txt2img", seed=6, prompt_text=long_text))).pixels
    assert not np.array_equal(plain, weighted)
    assert long.shape == plain.shape and not np.array_equal(plain, long)


async def test_controlnet_job_runs_and_its_strength_changes_the_image(render, pose_png: Path) -> None:
    plain = (await render(fill("txt2img", seed=9))).pixels
    weak = (await render(fill("txt2img-pose", seed=9, controlnet_strength=0.4), pose=pose_png)).pixels
    strong = (await render(fill("txt2img-pose", seed=9, controlnet_strength=0.9), pose=pose_png)).pixels
    lora = await render(fill("txt2img-pose-lora", seed=9), pose=pose_png)
    assert weak.shape == strong.shape == plain.shape == (96, 64, 3)
    assert not np.array_equal(weak, strong)
    assert not np.array_equal(weak, plain)
    assert lora.pixels.shape == (96, 64, 3)


async def test_controlnet_without_its_pose_image_fails_the_job(render) -> None:
    with pytest.raises(JobFailed) as err:
        await render(fill("txt2img-pose"))
    assert err.value.code == "execution_error" and "pose.png" in err.value.message


async def test_denoise_below_one_runs_the_last_steps_of_a_longer_schedule(render) -> None:
    full = await render(fill("txt2img", seed=4, steps=6))
    partial = await render(fill("txt2img", seed=4, steps=6, denoise=0.5))
    assert partial.progress[-1] == (6, 6) and len(partial.progress) == 6
    assert not np.array_equal(full.pixels, partial.pixels)


@pytest.mark.parametrize(("sampler", "scheduler"), [("dpmpp_2m", "karras"), ("ddim", "ddim_uniform"),
                                                    ("lms", "normal"), ("heun", "simple")])
async def test_other_samplers_render_and_report_user_steps(render, sampler: str, scheduler: str) -> None:
    ran = await render(fill("txt2img", steps=3, sampler_name=sampler, scheduler=scheduler))
    assert ran.progress[-1] == (3, 3)
    assert ran.pixels.std() > 0


async def test_cancel_stops_before_the_next_step(render, tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    with pytest.raises(JobCancelled):
        await render(fill("txt2img", steps=20), cancel_at=3, progress=progress)
    assert progress == [(1, 20), (2, 20), (3, 20)]
    assert list(tmp_path.glob("out-*.png")) == []


async def test_the_engine_runs_the_next_job_after_a_cancel(render) -> None:
    with pytest.raises(JobCancelled):
        await render(fill("txt2img", steps=10), cancel_at=1)
    ran = await render(fill("txt2img", steps=2))
    assert ran.progress[-1] == (2, 2)


async def test_validate_refuses_unknown_samplers_and_nodes_at_submit_time(engine) -> None:
    with pytest.raises(SamplerNotSupported) as err:
        await engine.validate(fill("txt2img", sampler_name="dpmpp_sde"))
    assert "euler_ancestral" in err.value.message and "dpmpp_sde" in err.value.details["sampler"]
    wf = fill("txt2img")
    wf["99"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["6", 0], "upscale_method": "nearest-exact",
                                                          "width": 64, "height": 64, "crop": "disabled"}}
    with pytest.raises(NodeNotSupported) as err2:
        await engine.validate(wf)
    assert err2.value.details["classType"] == "LatentUpscale" and "KSampler" in err2.value.details["supported"]


def _broken_copy(engine_models: Path, tmp_path: Path, values: dict[str, float]) -> Path:
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    ckpt = models / "checkpoints" / TINY_CHECKPOINT
    tensors = load_file(str(ckpt))
    for key, value in values.items():
        tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(ckpt))
    return models


@pytest.mark.parametrize(("values", "stage"), [
    # The VAE's last convolution outputs -10 everywhere: every pixel clamps to 0, a black image.
    ({"first_stage_model.decoder.conv_out.weight": 0.0, "first_stage_model.decoder.conv_out.bias": -10.0}, "vae"),
    ({"model.diffusion_model.out.2.bias": float("nan")}, "sampler"),  # NaN noise predictions
])
async def test_black_or_nan_output_fails_the_job(tmp_path: Path, engine_models: Path, values: dict[str, float],
                                                 stage: str) -> None:
    from sidecar.backend import RunContext
    from sidecar.config import Settings
    from sidecar.engine.backend import EmbeddedBackend

    models = _broken_copy(engine_models, tmp_path, values)
    backend = EmbeddedBackend(Settings(data_dir=tmp_path / "data", device="cpu", models_dir=models))
    await backend.start()
    out = tmp_path / "out.png"

    async def noop(_: str) -> None:
        return None

    try:
        with pytest.raises(JobFailed) as err:
            await backend.run(RunContext(job_id="b", workflow=fill("txt2img"), output_path=out,
                                         on_progress=lambda s, t: None, on_prompt_id=noop,
                                         cancel_event=asyncio.Event()))
    finally:
        await backend.stop()
    assert err.value.code == "black_image" and err.value.details["stage"] == stage
    assert not out.exists()


async def test_an_incompatible_lora_fails_the_job_and_leaves_the_base_clean(tmp_path: Path, engine_models: Path) -> None:
    from sidecar.backend import RunContext
    from sidecar.config import Settings
    from sidecar.engine.backend import EmbeddedBackend

    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    # LoRA keys in the LDM naming some trainers use, which name no module of a diffusers UNet.
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.ones(4, 32),
               "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.ones(32, 4)},
              str(models / "loras" / "other.safetensors"))
    # The good LoRA first, then the bad one: the good one was merged when the bad one failed.
    chained = fill("txt2img-lora", seed=12)
    chained["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["2", 1],
                                                             "lora_name": "other.safetensors",
                                                             "strength_model": 1.0, "strength_clip": 0.0}}
    chained["9"]["inputs"]["model"] = ["20", 0]
    backend = EmbeddedBackend(Settings(data_dir=tmp_path / "data", device="cpu", models_dir=models))
    await backend.start()

    async def noop(_: str) -> None:
        return None

    async def run(workflow: dict, name: str) -> Path:
        out = tmp_path / f"{name}.png"
        await backend.run(RunContext(job_id=name, workflow=workflow, output_path=out, on_progress=lambda s, t: None,
                                     on_prompt_id=noop, cancel_event=asyncio.Event()))
        return out

    try:
        before = await run(fill("txt2img", seed=12), "before")
        with pytest.raises(JobFailed) as err:
            await run(chained, "chained")
        after = await run(fill("txt2img", seed=12), "after")
    finally:
        await backend.stop()
    assert err.value.code == "lora_incompatible" and err.value.details["lora"] == "other.safetensors"
    with Image.open(before) as a, Image.open(after) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
