"""comfyui_delete_outputs: ComfyUI's copy of a job's image leaves its output/ folder once the daemon has
its own, where the daemon knows that folder; an identical prompt (answered from ComfyUI's cache) still
gets an image; files that are not our prompt's stay. Against the fake ComfyUI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from PIL import Image

from sidecar.comfyui.backend import ComfyBackend
from sidecar.comfyui.outputs import per_job_prefix, remove_outputs
from sidecar.config import Settings
from tests.conftest_comfy import make_job, workflow


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[ComfyBackend]:
    backend = ComfyBackend(settings)
    await backend.start()
    try:
        assert await backend.client.wait_connected(10)
        yield backend
    finally:
        await backend.stop()


def outputs_of(comfy_home: Path) -> list[Path]:
    return sorted(p for p in (comfy_home / "output").rglob("*.png"))


async def test_comfyuis_copy_is_removed_once_fetched_and_a_cached_rerun_still_gets_its_image(
        comfy_settings, fake_comfy, comfy_home, tmp_path) -> None:
    theirs = comfy_home / "output" / "artist-made_00001_.png"  # the artist's own render in ComfyUI's UI
    theirs.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(theirs)
    settings = comfy_settings.model_copy(update={"comfyui_dir": comfy_home})
    assert settings.comfyui_delete_outputs is True  # the default
    async with started(settings) as backend:
        first = make_job(tmp_path, workflow(steps=2, seed=5), job_id="a" * 32)
        result = await backend.run(first.ctx)
        assert result.output_path.is_file()
        assert outputs_of(comfy_home) == [theirs]
        ran = fake_comfy.history[first.prompt_ids[0]]["prompt"][2]
        assert ran["8"]["inputs"]["filename_prefix"].endswith("-" + "a" * 12)
        # The same workflow again (a --reproduce): ComfyUI would answer from its cache with the removed
        # file; the job's own prefix makes it save a new one.
        again = make_job(tmp_path, workflow(steps=2, seed=5), job_id="b" * 32)
        result = await backend.run(again.ctx)
        with Image.open(result.output_path) as img:
            assert img.size == (512, 768)
        assert outputs_of(comfy_home) == [theirs]


async def test_copies_are_kept_when_the_setting_is_off_or_the_folder_unknown(
        comfy_settings, fake_comfy, comfy_home, tmp_path) -> None:
    off = comfy_settings.model_copy(update={"comfyui_dir": comfy_home, "comfyui_delete_outputs": False})
    async with started(off) as backend:
        job = make_job(tmp_path, workflow(steps=2, seed=6), job_id="c" * 32)
        await backend.run(job.ctx)
        assert fake_comfy.history[job.prompt_ids[0]]["prompt"][2]["8"]["inputs"]["filename_prefix"] == \
            workflow()["8"]["inputs"]["filename_prefix"]
    assert len(outputs_of(comfy_home)) == 1
    async with started(comfy_settings) as backend:  # attach mode, folder unknown: no API deletes a file
        assert backend.delete_outputs is False
        await backend.run(make_job(tmp_path, workflow(steps=2, seed=7), job_id="d" * 32).ctx)
    assert len(outputs_of(comfy_home)) == 2


def test_only_files_inside_output_are_removed(tmp_path) -> None:
    comfy = tmp_path / "ComfyUI"
    (comfy / "output" / "plasma-sidecar").mkdir(parents=True)
    ours = comfy / "output" / "plasma-sidecar" / "txt2img-x_00001_.png"
    ours.write_bytes(b"png")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"keep")
    preview = comfy / "temp" / "ComfyUI_temp_00001_.png"
    preview.parent.mkdir()
    preview.write_bytes(b"temp")
    outputs = {"8": {"images": [{"filename": "txt2img-x_00001_.png", "subfolder": "plasma-sidecar", "type": "output"},
                                {"filename": "secret.png", "subfolder": "../..", "type": "output"},
                                {"filename": "ComfyUI_temp_00001_.png", "subfolder": "", "type": "temp"}]},
               "9": None}
    assert remove_outputs(comfy, outputs) == [ours.resolve()]
    assert not ours.exists() and secret.exists() and preview.exists()


def test_per_job_prefix_changes_only_save_nodes_and_is_idempotent() -> None:
    wf = workflow()
    tagged = per_job_prefix(wf, "0123456789abcdef")
    assert tagged["8"]["inputs"]["filename_prefix"] == wf["8"]["inputs"]["filename_prefix"] + "-0123456789ab"
    assert per_job_prefix(tagged, "0123456789abcdef") == tagged
    assert {k: v for k, v in tagged.items() if k != "8"} == {k: v for k, v in wf.items() if k != "8"}
    assert wf["8"]["inputs"]["filename_prefix"] == "plasma-sidecar/txt2img-lora"  # the input is not changed
    # A job's recorded workflow, reproduced by another job: the tag is replaced, the prefix does not grow.
    again = per_job_prefix(tagged, "fedcba9876543210")
    assert again["8"]["inputs"]["filename_prefix"] == "plasma-sidecar/txt2img-lora-fedcba987654"
