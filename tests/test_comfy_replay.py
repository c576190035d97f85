"""What the real ComfyUI showed (issue 18) through the real `sidecar serve` attached to the fake: the
job records the graph ComfyUI ran (precision fitted to a CPU server, the pose under the name ComfyUI
loads) so a saved workflow POSTs to ComfyUI as it is; time queued behind the artist's own prompts is
reported, not failed as inactivity; the submit path asks for single node classes, never the whole
`/object_info`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from PIL import Image

from tests.conftest_comfy import workflow
from tests.test_comfy_e2e import comfy, daemon, http, submit, wait_job  # noqa: F401 (fixtures)

DONE = {"succeeded", "failed", "cancelled"}


def pose_png(path: Path) -> Path:
    Image.new("RGB", (64, 96), (30, 200, 90)).save(path)
    return path


async def test_a_saved_pose_workflow_is_what_comfyui_ran_and_posts_to_it_unchanged(tmp_path, comfy, http) -> None:
    # The fake reports what the real CPU server did: device cpu, launched with --force-fp16.
    assert comfy.device_type == "cpu" and "--force-fp16" in comfy.argv
    pose = pose_png(tmp_path / "p003.png")
    async with daemon(tmp_path, comfy, http) as d:
        async with http.get(f"{d.url}/health") as resp:
            health = await resp.json()
        assert health["dtypes"] == {"unet": "fp32", "text_encoder": "fp16", "vae": "fp32"}
        assert not any("fp32-vae" in w for w in health["warnings"])  # an MPS concern, not a CPU one
        status, job = await submit(http, d, poseImagePath=str(pose))
        assert status == 202, job
        done = await wait_job(http, d, job["id"], DONE)
        assert done["status"] == "succeeded", done.get("error")
        saved = done["workflow"]
        ran = comfy.history[done["promptId"]]["prompt"][2]
        assert saved == ran  # the job's workflow (hence the PNG chunk and .workflow.json) is what ran
        assert [n["inputs"]["dtype"] for n in saved.values() if n["class_type"] == "ModelComputeDtype"] == ["fp32"]
        loads = [n["inputs"]["image"] for n in saved.values() if n["class_type"] == "LoadImage"]
        assert len(loads) == 1 and loads[0].startswith("sidecar-pose-") and loads[0] != pose.name
        assert done["params"]["poseImagePath"] == str(pose)  # what --reproduce loads again

        # Loaded in ComfyUI as it is (its UI, or a plain POST): accepted, nothing to fix by hand.
        async with http.post(f"{comfy.url}/prompt", json={"prompt": saved}) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        # And resubmitted through the daemon (generate --reproduce): the same graph is posted again.
        async with http.post(f"{d.url}/jobs", json={"workflow": saved, "poseImagePath": str(pose)}) as resp:
            assert resp.status == 202
            again = await resp.json()
        again = await wait_job(http, d, again["id"], DONE)
        assert again["status"] == "succeeded", again.get("error")
        assert again["workflow"] == saved == comfy.history[again["promptId"]]["prompt"][2]

        # The submit path asked for single node classes (once each, then known), never the whole
        # /object_info (497 KB on the real server): only the template load at start-up may.
        asked = [c for c in comfy.object_info_requests if c is not None]
        assert comfy.object_info_requests.count(None) <= 1 and len(asked) == len(set(asked))

        # A ComfyUI that queues the prompt under an id of its own: that id is the one followed.
        comfy.ignore_prompt_ids = True
        _, job = await submit(http, d, seed=11)
        done = await wait_job(http, d, job["id"], DONE)
        assert done["status"] == "succeeded", done.get("error")
        assert done["promptId"] == comfy.accepted[-1]
    log = (d.data_dir / "logs" / "sidecar.log").read_text()
    assert f"under id {comfy.accepted[-1]}" in log


async def test_waiting_behind_the_artists_own_prompts_is_reported_not_timed_out(tmp_path, comfy, http) -> None:
    async with daemon(tmp_path, comfy, http, SIDECAR_JOB_INACTIVITY_TIMEOUT="1",
                      SIDECAR_HISTORY_POLL_INTERVAL="0.2") as d:
        comfy.pause_at(1)
        comfy.enqueue(workflow(steps=3, seed=101))  # queued in ComfyUI's own UI
        comfy.enqueue(workflow(steps=3, seed=102))
        await comfy.wait_paused()
        _, job = await submit(http, d)
        seen = []
        for _ in range(60):  # 3 s queued: three times the inactivity timeout
            async with http.get(f"{d.url}/jobs/{job['id']}") as resp:
                current = await resp.json()
            seen.append(current["queuedBehind"])
            assert current["status"] == "running", current.get("error")
            await asyncio.sleep(0.05)
        assert seen[-1] == 2  # the running prompt and the other pending one
        comfy.resume()
        done = await wait_job(http, d, job["id"], DONE)
        assert done["status"] == "succeeded", done.get("error")
        assert done["queuedBehind"] is None


async def comfy_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
