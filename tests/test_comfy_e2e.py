"""Issue 3's "done when" (and issue 18's: the saved workflow is what ComfyUI ran, time queued behind the
artist's own prompts is reported, not timed out), end to end: the real `sidecar serve` process attached to a server speaking the
recorded ComfyUI protocol (the fake, in this test's loop), driven over HTTP only.

Each test starts the daemon as a subprocess (`--comfyui-url`), so start-up, configuration, the
SQLite store and a SIGKILL of the daemon are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.conftest_comfy import free_port, workflow
from tests.fake_comfyui import FakeComfyUI

START = 30.0  # the daemon imports aiohttp, pydantic and PIL on a shared 2-core machine


class Daemon:
    """`sidecar serve` in its own process, on its own port and data dir."""

    def __init__(self, data_dir: Path, comfy: FakeComfyUI, **env: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.comfy = comfy
        self.env = {**os.environ, "SIDECAR_HISTORY_POLL_INTERVAL": "0.5", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        config = self.data_dir.parent / "sidecar.toml"  # empty: the user's own config never leaks in
        config.touch()
        log_path = self.data_dir.parent / f"daemon-{self.port}.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(self.port), "--data-dir",
                 str(self.data_dir), "--comfyui-url", self.comfy.url, "--config", str(config)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar serve exited {self.proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/health") as resp:
                    if resp.status == 200 and (await resp.json())["comfyui"]:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError("the daemon did not report ComfyUI up in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the laptop's power goes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    from tests.fake_comfyui import make_comfy_home

    server = FakeComfyUI(make_comfy_home(tmp_path / "comfy"), step_delay=0.02)
    await server.start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, comfy: FakeComfyUI, http: aiohttp.ClientSession, **env: str) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path / "data", comfy, **env)
    await d.start(http)
    try:
        yield d
    finally:
        d.stop()


async def submit(http: aiohttp.ClientSession, d: Daemon, **body: Any) -> tuple[int, dict[str, Any]]:
    body = {"prompt": "spyke_plasma_v1, full body", "loraId": "spyke_plasma_v1", "steps": 4, "seed": 7, **body}
    async with http.post(f"{d.url}/jobs", json=body) as resp:
        return resp.status, await resp.json()


async def wait_job(http: aiohttp.ClientSession, d: Daemon, job_id: str, statuses: set[str],
                   timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{d.url}/jobs/{job_id}") as resp:
            job = await resp.json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job['status']}"
        await asyncio.sleep(0.05)


async def test_serve_attached_runs_a_page_and_refuses_what_the_profile_cannot(tmp_path, comfy, http) -> None:
    async with daemon(tmp_path, comfy, http) as d:
        async with http.get(f"{d.url}/health") as resp:
            health = await resp.json()
        assert health["status"] == "ok" and health["comfyui"] is True and health["mps"] is False

        status, job = await submit(http, d, resolution={"width": 512, "height": 768})
        assert status == 202
        done = await wait_job(http, d, job["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done.get("error")
        assert done["progress"] == {"step": 4, "total": 4}
        async with http.get(f"{d.url}/jobs/{job['id']}/image") as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            image = Image.open(io.BytesIO(await resp.read()))
        assert image.size == (512, 768)

        posts = comfy.prompt_posts
        refusals = [({"resolution": {"width": 1024, "height": 1024}}, "resolution_exceeds_profile"),
                    ({"batchSize": 2}, "batch_size_not_supported"),
                    ({"colour": "red"}, "unknown_field")]
        for body, code in refusals:
            status, answer = await submit(http, d, **body)
            assert (status, answer["error"]["code"]) == (400, code)
        assert "512x768" in (await submit(http, d, resolution={"width": 1024, "height": 1024}))[1]["error"]["message"]
        assert comfy.prompt_posts == posts  # nothing refused reached ComfyUI

    # One log line per request and per job state change, in the data dir as on stderr.
    log = (d.data_dir / "logs" / "sidecar.log").read_text()
    for state in ("queued", "-> running", "-> succeeded"):
        assert f"job {job['id']} {state}" in log
    assert log.count("POST /jobs 400") == 4 and "POST /jobs 202" in log


async def test_comfyui_dying_mid_job_fails_it_clearly_and_the_daemon_carries_on(tmp_path, comfy, http) -> None:
    # A short deadline: the job waits that long for ComfyUI to come back before failing.
    async with daemon(tmp_path, comfy, http, SIDECAR_COMFYUI_UNAVAILABLE_DEADLINE="2") as d:
        comfy.pause_at(2)
        _, job = await submit(http, d)
        await comfy.wait_paused()
        await comfy.kill()
        failed = await wait_job(http, d, job["id"], {"succeeded", "failed"}, timeout=40)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "comfyui_unavailable"
        assert "ComfyUI" in failed["error"]["message"]

        comfy.resume()
        await comfy.restart()
        _, again = await submit(http, d)
        assert (await wait_job(http, d, again["id"], {"succeeded", "failed"}))["status"] == "succeeded"


async def test_daemon_killed_with_a_running_and_queued_jobs_loses_none_and_runs_none_twice(tmp_path, comfy,
                                                                                         http) -> None:
    d = Daemon(tmp_path / "data", comfy)
    await d.start(http)
    try:
        comfy.pause_at(2)
        ids = [(await submit(http, d, seed=seed))[1]["id"] for seed in (1, 2, 3)]
        await comfy.wait_paused()
        d.kill()
        comfy.resume()  # the running prompt finishes in ComfyUI while the daemon is down
        await comfy.wait_for(lambda: len(comfy.history) == 1)

        await d.start(http)
        jobs = [await wait_job(http, d, job_id, {"succeeded", "failed", "cancelled"}) for job_id in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 3
        assert comfy.prompt_posts == 3  # the one that ran during the outage was collected, not re-posted
        for job_id in ids:
            async with http.get(f"{d.url}/jobs/{job_id}/image") as resp:
                assert resp.status == 200
    finally:
        d.stop()


async def test_faults_mid_run_end_each_job_clearly_and_run_none_twice(tmp_path, comfy, http) -> None:
    """One daemon through the faults a user meets: a dropped WebSocket, a workflow ComfyUI refuses, a
    node that raises, a cancel through our API and one pressed in ComfyUI's own UI."""
    async with daemon(tmp_path, comfy, http) as d:
        # The WebSocket drops mid-run and stays down until the prompt is done: every message about its
        # end is lost, and the job still succeeds from /history, posted and executed once.
        comfy.pause_at(2)
        _, job = await submit(http, d)
        await comfy.wait_paused()
        comfy.hold_connections()
        await comfy.drop_socket()
        comfy.resume()
        done = await wait_job(http, d, job["id"], {"succeeded", "failed", "cancelled"})
        comfy.release_connections()
        pid = done["promptId"]
        assert done["status"] == "succeeded", done.get("error")
        assert pid in comfy.history and (comfy.accepted.count(pid), comfy.executions.count(pid)) == (1, 1)
        assert comfy.prompt_posts == 1 and ("executing" in {kind for _, kind in comfy.dropped})
        async with http.get(f"{d.url}/jobs/{job['id']}/image") as resp:
            assert resp.status == 200
        await comfy.wait_for(lambda: bool(comfy.connected_clients))  # the daemon's socket is back

        # A value past the limits never reaches ComfyUI: the daemon refuses the whole workflow itself.
        workflow = done["workflow"]
        workflow["6"]["inputs"]["steps"] = 100000
        async with http.post(f"{d.url}/jobs", json={"workflow": workflow}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_field"

        # ComfyUI refuses the workflow at POST /prompt (the recorded value_not_in_list case: the LoRA file
        # was removed from its folder after the daemon checked the job): the job fails with ComfyUI's
        # node errors, and nothing of it ran.
        comfy.pause_at(1)
        _, blocker = await submit(http, d, seed=11)
        await comfy.wait_paused()
        _, refused = await submit(http, d, seed=12)  # checked now, posted once the blocker is done
        lora = comfy.base_dir / "models" / "loras" / "spyke_plasma_v1.safetensors"
        kept = lora.read_bytes()
        lora.unlink()
        comfy.resume()
        assert (await wait_job(http, d, blocker["id"], {"succeeded", "failed", "cancelled"}))["status"] == "succeeded"
        failed = await wait_job(http, d, refused["id"], {"succeeded", "failed", "cancelled"})
        lora.write_bytes(kept)
        assert failed["status"] == "failed" and failed["error"]["code"] == "comfyui_validation_error"
        node = failed["error"]["details"]["node_errors"]["2"]
        assert node["class_type"] == "LoraLoader" and node["errors"][0]["type"] == "value_not_in_list"
        assert "lora_name" in failed["error"]["message"]
        assert len(comfy.executions) == 2  # the first job and the blocker

        # A node raises while running: execution_error with the node id, type and exception message.
        comfy.fail_node("KSampler", "RuntimeError", "MPS backend out of memory")
        _, job = await submit(http, d, seed=8)  # a new seed: ComfyUI's cache would skip the sampler
        failed = await wait_job(http, d, job["id"], {"succeeded", "failed", "cancelled"})
        comfy.clear_failures()
        assert failed["status"] == "failed" and failed["error"]["code"] == "execution_error"
        assert {k: failed["error"]["details"][k] for k in ("node_id", "node_type", "exception_message")} == {
            "node_id": "6", "node_type": "KSampler", "exception_message": "MPS backend out of memory"}
        assert "node 6 (KSampler)" in failed["error"]["message"]

        # Cancel of a running job over HTTP: ComfyUI is interrupted, the job ends cancelled once it confirms.
        comfy.pause_at(2)
        _, job = await submit(http, d, steps=10, seed=9)
        await comfy.wait_paused()
        async with http.post(f"{d.url}/jobs/{job['id']}/cancel") as resp:
            assert resp.status == 202
        await comfy.wait_for(lambda: len(comfy.interrupts) == 1)
        comfy.resume()
        cancelled = await wait_job(http, d, job["id"], {"succeeded", "failed", "cancelled"})
        pid = cancelled["promptId"]
        assert cancelled["status"] == "cancelled" and cancelled["error"] is None
        assert comfy.interrupts == [pid]
        assert comfy.history[pid]["status"]["messages"][-1][0] == "execution_interrupted"

        # Cancel pressed in ComfyUI's own UI (a global interrupt the daemon did not send): cancelled too.
        comfy.pause_at(2)
        _, job = await submit(http, d, steps=10, seed=10)
        await comfy.wait_paused()
        async with http.post(f"{comfy.url}/interrupt") as resp:
            assert resp.status == 200
        comfy.resume()
        cancelled = await wait_job(http, d, job["id"], {"succeeded", "failed", "cancelled"})
        assert cancelled["status"] == "cancelled" and cancelled["error"] is None
        assert comfy.interrupts == [pid, None]  # only the UI's; the daemon sent none for this job

    log = (d.data_dir / "logs" / "sidecar.log").read_text()
    assert f"job {job['id']} cancelled: " in log and "not by this daemon" in log


async def test_submit_while_comfyui_is_down_is_refused_then_three_jobs_run_fifo_one_prompt_at_a_time(
        tmp_path, comfy, http) -> None:
    async with daemon(tmp_path, comfy, http) as d:
        # ComfyUI down (attach mode, no install dir to list models from): POST /jobs answers 503
        # comfyui_unavailable, as the manual's error codes say, and nothing is queued.
        await comfy.kill()
        status, answer = await submit(http, d)
        assert (status, answer["error"]["code"]) == (503, "comfyui_unavailable")
        assert "ComfyUI" in answer["error"]["message"]
        async with http.get(f"{d.url}/jobs") as resp:
            assert (await resp.json())["jobs"] == []
        assert comfy.prompt_posts == 0

        await comfy.restart()
        # Every time ComfyUI accepts a prompt, none of ours may be queued or running there already.
        seen_at_accept: list[tuple[list[str], str | None]] = []
        accept = comfy._accept

        def checked_accept(state, *args: Any, **kwargs: Any) -> str:
            seen_at_accept.append(([item.prompt_id for item in state.pending],
                                   state.running.prompt_id if state.running else None))
            return accept(state, *args, **kwargs)

        comfy._accept = checked_accept  # type: ignore[method-assign]
        comfy.pause_at(2)
        ids = [await submit(http, d, seed=seed) for seed in (1, 2, 3)]  # back to back, the first still running
        assert [status for status, _ in ids] == [202] * 3
        await comfy.wait_paused()
        async with http.get(f"{d.url}/health") as resp:
            assert (await resp.json())["queueDepth"] == 2
        assert len(comfy.accepted) == 1 and comfy.pending_ids == []
        comfy.resume()

        jobs = [await wait_job(http, d, job["id"], {"succeeded", "failed", "cancelled"}) for _, job in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 3
        # FIFO in submission order, and each prompt posted only once the one before it had finished.
        assert comfy.executions == comfy.accepted == [j["promptId"] for j in jobs]
        assert [j["startedAt"] for j in jobs] == sorted(j["startedAt"] for j in jobs)
        assert seen_at_accept == [([], None)] * 3


# -- what the real ComfyUI showed (issue 18): the saved workflow is what ran; queued is not inactive

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
