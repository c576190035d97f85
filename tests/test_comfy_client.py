"""`ComfyBackend` against the fake ComfyUI: what a job's owner sees when ComfyUI works, refuses,
fails, is cancelled, drops its socket, dies, or was left running across a daemon restart."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from sidecar.backend import RunResult
from sidecar.comfyui.backend import ComfyBackend
from sidecar.comfyui.images import write_checked_image
from sidecar.config import Settings
from sidecar.errors import ComfyUnavailable, JobCancelled, JobFailed, NodeNotSupported, PromptLost, SamplerNotSupported
from tests.conftest_comfy import make_job, workflow


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[ComfyBackend]:
    backend = ComfyBackend(settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


async def test_job_runs_to_a_png_with_progress(comfy_backend, fake_comfy, tmp_path) -> None:
    job = make_job(tmp_path, workflow(steps=3))
    result = await comfy_backend.run(job.ctx)
    assert isinstance(result, RunResult) and result.output_path == job.ctx.output_path
    assert result.device == "cpu"
    with Image.open(result.output_path) as img:
        assert img.size == (512, 768)  # the template's EmptyLatentImage
    assert job.progress == [(1, 3), (2, 3), (3, 3)]
    assert job.prompt_ids == fake_comfy.accepted == [result.extra["prompt_id"]]
    assert fake_comfy.posted_with_socket == [True]  # the WebSocket was open before the POST
    saved = fake_comfy.base_dir / "output" / "plasma-sidecar" / result.extra["comfyui_file"]["filename"]
    assert result.output_path.read_bytes() == saved.read_bytes()
    assert not list(result.output_path.parent.glob(".*.tmp"))


async def test_refused_workflow_fails_with_comfyuis_node_errors(comfy_backend, fake_comfy, tmp_path) -> None:
    job = make_job(tmp_path, workflow(lora_name="not-installed.safetensors"))
    with pytest.raises(JobFailed) as failed:
        await comfy_backend.run(job.ctx)
    err = failed.value
    assert err.code == "comfyui_validation_error"
    assert "node 2 (LoraLoader)" in err.message and "not-installed.safetensors" in err.message
    assert err.details["error"]["type"] == "prompt_outputs_failed_validation"
    assert err.details["node_errors"]["2"]["errors"][0]["type"] == "value_not_in_list"
    assert not job.ctx.output_path.exists() and fake_comfy.executions == []


async def test_unknown_node_type_is_refused_before_and_by_comfyui(comfy_backend, fake_comfy, tmp_path) -> None:
    wf = workflow()
    wf["9"]["class_type"] = "NoSuchNode"
    with pytest.raises(NodeNotSupported) as refused:
        await comfy_backend.validate(wf)
    assert refused.value.details == {"nodes": {"9": "NoSuchNode"}}
    with pytest.raises(JobFailed) as failed:
        await comfy_backend.run(make_job(tmp_path, wf).ctx)
    assert failed.value.code == "comfyui_validation_error"
    assert failed.value.details["error"]["type"] == "invalid_prompt"
    assert "NoSuchNode" in failed.value.message


async def test_unknown_sampler_is_refused_at_validation(comfy_backend) -> None:
    with pytest.raises(SamplerNotSupported) as refused:
        await comfy_backend.validate(workflow(sampler_name="dpm_fantasy"))
    assert refused.value.details["field"] == "sampler_name" and "euler_ancestral" in refused.value.details["allowed"]
    await comfy_backend.validate(workflow())


async def test_comfyui_internal_error_on_post_fails_the_job(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.crash_next_post = True
    with pytest.raises(JobFailed) as failed:
        await comfy_backend.run(make_job(tmp_path, workflow()).ctx)
    assert failed.value.code == "comfyui_validation_error"
    assert failed.value.details["status"] == 500
    assert "Server got itself in trouble" in failed.value.details["body"]


async def test_lost_answer_to_post_is_reconciled_not_posted_again(comfy_backend, fake_comfy, tmp_path,
                                                                   caplog) -> None:
    fake_comfy.lose_next_answer = True
    job = make_job(tmp_path, workflow())
    result = await comfy_backend.run(job.ctx)
    assert result.output_path.is_file() and "no answer to POST /prompt" in caplog.text
    assert fake_comfy.prompt_posts == 1 and fake_comfy.executions == job.prompt_ids


async def test_execution_error_names_node_and_exception(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.fail_node("KSampler", "RuntimeError", "MPS backend out of memory")
    with pytest.raises(JobFailed) as failed:
        await comfy_backend.run(make_job(tmp_path, workflow()).ctx)
    err = failed.value
    assert err.code == "execution_error"
    assert "node 6 (KSampler)" in err.message and "MPS backend out of memory" in err.message
    assert {k: err.details[k] for k in ("node_id", "node_type", "exception_type", "exception_message")} == {
        "node_id": "6", "node_type": "KSampler", "exception_type": "RuntimeError",
        "exception_message": "MPS backend out of memory"}
    assert err.details["traceback"]


async def test_cancel_running_job_interrupts_and_ends_cancelled(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow(steps=10))
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    job.ctx.cancel_event.set()
    await fake_comfy.wait_for(lambda: bool(fake_comfy.interrupts))
    assert not task.done()  # cancelled only once ComfyUI confirms
    fake_comfy.resume()
    with pytest.raises(JobCancelled):
        await task
    pid = job.prompt_ids[0]
    assert fake_comfy.interrupts == [pid]
    assert fake_comfy.history[pid]["status"]["messages"][-1][0] == "execution_interrupted"
    assert job.progress == [(1, 10)] and not job.ctx.output_path.exists()


async def test_interrupt_nobody_asked_for_cancels_the_job_saying_where(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    async with aiohttp.ClientSession() as http:  # the Cancel button of ComfyUI's web UI: a global interrupt
        async with http.post(f"{fake_comfy.url}/interrupt") as resp:
            assert resp.status == 200
    fake_comfy.resume()
    with pytest.raises(JobCancelled) as cancelled:
        await task
    message = str(cancelled.value)
    assert "interrupted in ComfyUI" in message and "not by this daemon" in message
    assert "node 6 (KSampler)" in message
    assert not job.ctx.cancel_event.is_set() and not job.ctx.output_path.exists()


async def test_cancel_queued_job_deletes_it_from_comfyuis_queue(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    blocker = fake_comfy.enqueue(workflow(seed=99))  # someone else's prompt (the ComfyUI web UI)
    await fake_comfy.wait_paused()
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_for(lambda: bool(job.prompt_ids) and job.prompt_ids[0] in fake_comfy.pending_ids)
    job.ctx.cancel_event.set()
    with pytest.raises(JobCancelled):
        await task
    pid = job.prompt_ids[0]
    assert fake_comfy.deleted == [pid] and fake_comfy.interrupts == []
    fake_comfy.resume()
    await fake_comfy.wait_for(lambda: blocker in fake_comfy.history)
    assert pid not in fake_comfy.executions


async def test_job_survives_websocket_drop_mid_run_and_is_not_run_twice(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow(steps=4))
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    await fake_comfy.drop_socket()
    await fake_comfy.wait_for(lambda: comfy_backend.client.reconnects == 1)
    fake_comfy.resume()
    result = await task
    assert result.output_path.is_file()
    assert fake_comfy.prompt_posts == 1 and fake_comfy.executions == job.prompt_ids
    assert job.progress[-1] == (4, 4)  # progress goes on over the new socket


async def test_missed_completion_is_recovered_from_history(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    fake_comfy.hold_connections()  # the socket stays down: no message reaches the daemon any more
    await fake_comfy.drop_socket(abrupt=True)
    fake_comfy.resume()
    result = await asyncio.wait_for(task, 10)  # found by the /history poll
    assert result.output_path.is_file()
    client_id = comfy_backend.client.client_id
    assert (client_id, "execution_success") in fake_comfy.dropped and (client_id, "executing") in fake_comfy.dropped
    assert fake_comfy.prompt_posts == 1
    fake_comfy.release_connections()


async def test_comfyui_killed_mid_run_loses_the_prompt(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    await fake_comfy.kill()
    with pytest.raises(PromptLost) as lost:
        await asyncio.wait_for(task, 10)
    assert lost.value.code == "prompt_lost" and lost.value.details["prompt_id"] == job.prompt_ids[0]
    # The runner re-queues it once: once ComfyUI is back, the same job runs as a new prompt.
    fake_comfy.resume()
    await fake_comfy.restart()
    retry = make_job(tmp_path, workflow())
    result = await comfy_backend.run(retry.ctx)
    assert result.output_path.is_file() and retry.prompt_ids != job.prompt_ids


async def test_comfyui_restarted_while_running_loses_the_prompt(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await fake_comfy.wait_paused()
    await fake_comfy.restart()  # back before the daemon noticed: queue and history are empty
    with pytest.raises(PromptLost) as lost:
        await asyncio.wait_for(task, 10)
    assert lost.value.details["prompt_id"] == job.prompt_ids[0]


async def test_daemon_restart_collects_a_prompt_that_finished_meanwhile(comfy_settings, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    first = make_job(tmp_path, workflow())
    async with started(comfy_settings) as before:
        task = asyncio.create_task(before.run(first.ctx))
        await fake_comfy.wait_paused()
        task.cancel()  # the daemon dies; its prompt id was persisted
        with contextlib.suppress(asyncio.CancelledError):
            await task
    fake_comfy.resume()
    pid = first.prompt_ids[0]
    await fake_comfy.wait_for(lambda: pid in fake_comfy.history)
    again = make_job(tmp_path, workflow(), prompt_id=pid)
    async with started(comfy_settings) as after:
        result = await after.run(again.ctx)
    assert result.output_path.is_file() and result.extra["prompt_id"] == pid
    assert fake_comfy.prompt_posts == 1 and again.prompt_ids == []


async def test_daemon_restart_follows_a_prompt_still_running(comfy_settings, fake_comfy, tmp_path) -> None:
    fake_comfy.pause_at(1)
    first = make_job(tmp_path, workflow(steps=3))
    async with started(comfy_settings) as before:
        task = asyncio.create_task(before.run(first.ctx))
        await fake_comfy.wait_paused()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    again = make_job(tmp_path, workflow(steps=3), prompt_id=first.prompt_ids[0])
    async with started(comfy_settings) as after:
        task = asyncio.create_task(after.run(again.ctx))
        await fake_comfy.wait_for(lambda: after.client.connected)
        await asyncio.sleep(0.05)
        fake_comfy.resume()
        result = await task
    assert result.output_path.is_file() and fake_comfy.prompt_posts == 1
    assert again.progress[-1] == (3, 3)


async def test_daemon_restart_with_a_prompt_comfyui_does_not_know_is_lost(comfy_backend, tmp_path) -> None:
    job = make_job(tmp_path, workflow(), prompt_id="4d8e1f0a-0000-4000-8000-000000000000")
    with pytest.raises(PromptLost) as lost:
        await comfy_backend.run(job.ctx)
    assert lost.value.details["reason"] == "unknown_to_comfyui"


async def test_black_image_fails_the_job(comfy_backend, fake_comfy, tmp_path) -> None:
    fake_comfy.black_output = True
    job = make_job(tmp_path, workflow())
    with pytest.raises(JobFailed) as failed:
        await comfy_backend.run(job.ctx)
    assert failed.value.code == "black_image" and "--fp32-vae" in failed.value.message
    assert not job.ctx.output_path.exists()


def _png(arr: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **save)
    return buf.getvalue()


def _last_pixel_blue() -> np.ndarray:
    arr = np.zeros((768, 512, 3), np.uint8)
    arr[-1, -1, 2] = 1
    return arr


@pytest.mark.parametrize(("image", "black"), [
    (_png(np.zeros((768, 512, 3), np.uint8)), True),
    (_png(np.zeros((768, 512, 3), np.uint8), compress_level=0), True),
    (_png(np.zeros((768, 512, 3), np.uint8), compress_level=9), True),
    (_png(np.zeros((768, 512), np.uint8)), True),
    (_png(np.dstack([np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 1), 255, np.uint8)])), True),  # opaque
    (_png(_last_pixel_blue()), False),
    (_png(np.full((768, 512, 3), 255, np.uint8)), False),
    (_png(np.random.default_rng(0).integers(0, 255, (96, 64, 3), dtype=np.uint8)), False),
])
def test_black_images_are_refused_whatever_their_encoding(tmp_path, image: bytes, black: bool) -> None:
    target = tmp_path / "out.png"
    if black:
        with pytest.raises(JobFailed) as failed:
            write_checked_image(image, target)
        assert failed.value.code == "black_image" and not target.exists()
    else:
        write_checked_image(image, target)
        assert target.read_bytes() == image


def test_truncated_image_is_an_execution_error(tmp_path) -> None:
    image = _png(np.random.default_rng(1).integers(0, 255, (96, 64, 3), dtype=np.uint8))
    with pytest.raises(JobFailed) as failed:
        write_checked_image(image[: len(image) // 2], tmp_path / "out.png")
    assert failed.value.code == "execution_error" and not (tmp_path / "out.png").exists()


def _pose(path: Path, colour: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (512, 768), colour).save(path)
    return path


def _pose_workflow(pose: Path) -> dict[str, Any]:
    return workflow("txt2img-pose-lora", pose_image=pose.name, controlnet_strength=0.65)


async def test_pose_is_copied_into_comfyuis_input_dir_when_known(comfy_settings, fake_comfy, comfy_home,
                                                                  tmp_path) -> None:
    settings = comfy_settings.model_copy(update={"comfyui_dir": comfy_home})
    a = _pose(tmp_path / "poses" / "pose.png", "white")
    b = _pose(tmp_path / "other" / "pose.png", "gray")  # same file name, different pose
    async with started(settings) as backend:
        assert backend.models_dir("loras") == comfy_home / "models" / "loras"
        names = []
        for i, pose in enumerate((a, b, a)):
            job = make_job(tmp_path, _pose_workflow(pose), job_id=f"j{i}", pose=pose)
            await backend.run(job.ctx)
            assert job.ctx.workflow["12"]["inputs"]["image"] == "pose.png"  # the job's record is untouched
            names.append(fake_comfy.history[job.prompt_ids[0]]["prompt"][2]["12"]["inputs"]["image"])
    assert fake_comfy.uploads == []
    assert names[0] == names[2] != names[1] and all(n.startswith("sidecar-pose-") for n in names)
    assert (comfy_home / "input" / names[0]).read_bytes() == a.read_bytes()
    assert (comfy_home / "input" / names[1]).read_bytes() == b.read_bytes()


async def test_pose_is_uploaded_when_comfyuis_dir_is_unknown(comfy_backend, fake_comfy, comfy_home, tmp_path) -> None:
    assert comfy_backend.models_dir("loras") is None
    pose = _pose(tmp_path / "pose.png", "white")
    job = make_job(tmp_path, _pose_workflow(pose), pose=pose)
    await comfy_backend.run(job.ctx)
    posted = fake_comfy.history[job.prompt_ids[0]]["prompt"][2]["12"]["inputs"]["image"]
    assert fake_comfy.uploads == [posted] and posted.startswith("sidecar-pose-")
    assert (comfy_home / "input" / posted).read_bytes() == pose.read_bytes()


async def test_stuck_prompt_is_interrupted_and_fails_as_timeout(comfy_settings, fake_comfy, tmp_path) -> None:
    settings = comfy_settings.model_copy(update={"job_inactivity_timeout": 0.5})
    fake_comfy.pause_at(1)
    job = make_job(tmp_path, workflow())
    async with started(settings) as backend:
        with pytest.raises(JobFailed) as failed:
            await asyncio.wait_for(backend.run(job.ctx), 10)
    assert failed.value.code == "timeout" and failed.value.details["where"] == "running"
    assert fake_comfy.interrupts == job.prompt_ids
    fake_comfy.resume()


async def test_health_reports_device_and_warns_without_fp32_vae_on_mps_only(comfy_backend, fake_comfy) -> None:
    health = await comfy_backend.health()
    # What our jobs really compute in on the CPU: fp32 sent for the UNet; CLIP weights load fp16.
    assert health.device == "cpu" and health.dtypes == {"unet": "fp32", "text_encoder": "fp16", "vae": "fp32"}
    fake_comfy.argv = ["main.py", "--cpu", "--listen", "127.0.0.1"]
    health = await comfy_backend.health()
    assert health.warnings == []  # the MPS concern is no concern on a CPU server
    fake_comfy.device_type = "mps"
    fake_comfy.argv = ["main.py", "--force-fp16", "--fp32-vae", "--listen", "127.0.0.1"]
    health = await comfy_backend.health()
    assert health.available and health.engine == "comfyui" and health.device == "mps"
    assert health.warnings == [] and health.dtypes == {"unet": "fp16", "text_encoder": "fp16", "vae": "fp32"}
    assert health.extra["comfyuiVersion"] == "0.3.64" and "--fp32-vae" in health.extra["argv"]
    fake_comfy.argv = ["main.py", "--force-fp16", "--listen", "127.0.0.1"]
    health = await comfy_backend.health()
    assert health.available and any("--fp32-vae" in w for w in health.warnings)
    assert health.dtypes["vae"] == "fp16"
    await fake_comfy.kill()
    health = await comfy_backend.health()
    assert not health.available and health.warnings


async def test_job_fails_unavailable_when_comfyui_stays_down(comfy_settings, fake_comfy, tmp_path) -> None:
    settings = comfy_settings.model_copy(update={"comfyui_unavailable_deadline": 0.5})
    await fake_comfy.kill()
    async with started(settings) as backend:
        with pytest.raises(ComfyUnavailable) as down:
            await asyncio.wait_for(backend.run(make_job(tmp_path, workflow()).ctx), 10)
    assert down.value.code == "comfyui_unavailable" and fake_comfy.prompt_posts == 0


async def test_job_waits_for_comfyui_to_come_back(comfy_backend, fake_comfy, tmp_path) -> None:
    await fake_comfy.kill()
    job = make_job(tmp_path, workflow())
    task = asyncio.create_task(comfy_backend.run(job.ctx))
    await asyncio.sleep(0.3)
    assert not task.done()
    await fake_comfy.restart()
    result = await asyncio.wait_for(task, 10)
    assert result.output_path.is_file() and fake_comfy.posted_with_socket == [True]


async def test_models_and_node_types_come_from_comfyui(comfy_backend, fake_comfy) -> None:
    assert await comfy_backend.list_models("loras") == ["spyke_plasma_v1.safetensors"]
    assert await comfy_backend.list_models("checkpoints") == ["anything-v5.safetensors"]
    assert await comfy_backend.list_models("controlnet") == ["control_v11p_sd15_openpose.pth"]
    (fake_comfy.base_dir / "models" / "loras" / "spyke_plasma_v1-000400.safetensors").write_bytes(b"x")
    assert "spyke_plasma_v1-000400.safetensors" in await comfy_backend.list_models("loras")
    types = await comfy_backend.known_node_types()
    assert {"KSampler", "ModelComputeDtype", "LoadImage", "ControlNetApplyAdvanced"} <= types


async def test_models_come_from_loader_enums_on_a_comfyui_without_models_route(comfy_backend, fake_comfy) -> None:
    fake_comfy.models_endpoint = False
    assert await comfy_backend.list_models("loras") == ["spyke_plasma_v1.safetensors"]
    assert await comfy_backend.list_models("controlnet") == ["control_v11p_sd15_openpose.pth"]


async def test_models_are_listed_from_disk_while_comfyui_restarts(comfy_settings, fake_comfy, comfy_home) -> None:
    settings = comfy_settings.model_copy(update={"comfyui_dir": comfy_home})
    await fake_comfy.kill()
    async with started(settings) as backend:
        assert await backend.list_models("loras") == ["spyke_plasma_v1.safetensors"]
    async with started(comfy_settings) as backend:  # no install dir known: nothing to fall back on
        with pytest.raises(ComfyUnavailable):
            await backend.list_models("loras")


async def test_unload_before_training_asks_comfyui_to_free_its_models(comfy_backend, fake_comfy) -> None:
    await comfy_backend.unload()
    assert fake_comfy.frees == [{"unload_models": True, "free_memory": True}]
    # A ComfyUI that is down holds no memory: unloading it is not an error that would stop training.
    await fake_comfy.kill()
    await asyncio.wait_for(comfy_backend.unload(), 10)
    assert len(fake_comfy.frees) == 1


@pytest.mark.parametrize(("device", "sent"), [("cpu", "fp32"), ("mps", "fp16")])
async def test_template_fp16_unet_is_not_forced_on_a_cpu_comfyui(comfy_settings, fake_comfy, tmp_path,
                                                                 device, sent) -> None:
    # A real CPU ComfyUI obeys ModelComputeDtype fp16 and runs 3.5-30x slower than in fp32; `default`
    # would not do under --force-fp16 either (the weights, hence the compute, are fp16 there).
    fake_comfy.device_type = device
    assert "--force-fp16" in fake_comfy.argv
    wf = workflow(steps=1)
    job = make_job(tmp_path, wf)
    async with started(comfy_settings) as backend:
        await backend.run(job.ctx)
    ran = fake_comfy.history[job.prompt_ids[0]]["prompt"][2]
    dtype_nodes = [n for n in ran.values() if n["class_type"] == "ModelComputeDtype"]
    assert dtype_nodes and all(n["inputs"]["dtype"] == sent for n in dtype_nodes)
    # The job records what ComfyUI ran (its saved workflow replays the same pixels).
    assert job.workflows == ([ran] if device == "cpu" else [])


async def test_validate_asks_for_the_classes_it_needs_once_never_the_whole_object_info(comfy_backend,
                                                                                       fake_comfy) -> None:
    wf = workflow()
    await comfy_backend.validate(wf)
    asked = list(fake_comfy.object_info_requests)
    assert None not in asked and sorted(asked) == sorted({n["class_type"] for n in wf.values()})
    await comfy_backend.validate(workflow(seed=2))
    assert fake_comfy.object_info_requests == asked  # known: a submit does not wait on ComfyUI for it
    bad = {**wf, "99": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(NodeNotSupported):
        await comfy_backend.validate(bad)
    assert fake_comfy.object_info_requests == [*asked, "NoSuchNode"]


async def test_an_answer_past_its_bound_or_not_json_is_comfyui_unavailable_not_held(aiohttp_server) -> None:
    # A server on ComfyUI's port that is broken or hostile: its answers are read in pieces and refused past
    # the bound, and a body that is not JSON is named, never a 500.
    from aiohttp import web

    from sidecar.answer_limits import MAX_JSON_ANSWER
    from sidecar.comfyui.client import ComfyClient

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)  # chunked: no length to refuse it by
        block = b" " * (1024 * 1024)
        for _ in range(MAX_JSON_ANSWER // len(block) + 2):
            await resp.write(block)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/system_stats", endless)
    async def not_comfyui(_r: web.Request) -> web.Response:
        return web.Response(text="<html>not ComfyUI</html>")

    async def not_json(_r: web.Request) -> web.Response:
        return web.Response(text="{nope")

    app.router.add_get("/queue", not_comfyui)
    app.router.add_get("/models/checkpoints", not_json)
    server = await aiohttp_server(app)
    client = ComfyClient(str(server.make_url("")).rstrip("/"))
    await client.start()
    try:
        with pytest.raises(ComfyUnavailable, match=f"at most {MAX_JSON_ANSWER} are read"):
            await client.system_stats()
        with pytest.raises(ComfyUnavailable, match="not JSON"):
            await client.queue()
        with pytest.raises(ComfyUnavailable, match="not JSON"):
            await client.models("checkpoints")
    finally:
        await client.close()
