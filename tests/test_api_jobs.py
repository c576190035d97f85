"""The generation API's contract: validation codes, FIFO, cancel, events, restart — driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.assets import WORKFLOWS, asset_path
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend


async def wait_status(client, job_id: str, statuses: set[str], timeout: float = 10) -> dict:
    for _ in range(int(timeout / 0.02)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {job['status']}")


async def wait_accepted(client, job_id: str, timeout: float = 10) -> dict:
    """Running, and the backend took its prompt id: what a restart reconciles by (a job stopped before
    that is rightly re-queued as never accepted)."""
    for _ in range(int(timeout / 0.02)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] == "running" and job["promptId"] is not None:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} is {job['status']} with prompt id {job['promptId']}")


async def submit(client, **body) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **body})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def submit_full(client, **body) -> dict:
    """Submit, then the job in full (the submit answer is a summary, without the workflow)."""
    job = await submit(client, **body)
    return await (await client.get(f"/jobs/{job['id']}")).json()


async def test_job_runs_to_png_with_resolved_params(client, backend) -> None:
    job = await submit(client, loraId="spyke_plasma_v1", seed=42)
    assert job["status"] == "queued" and job["workflowTemplate"] == "txt2img-lora"
    done = await wait_status(client, job["id"], {"succeeded"})
    assert done["params"]["seed"] == 42 and done["params"]["steps"] == 20 and done["params"]["sampler"] == "euler_ancestral"
    assert done["progress"] == {"step": 3, "total": 3}
    assert done["workflow"]["6"]["inputs"]["seed"] == 42
    assert done["workflow"]["2"]["inputs"]["lora_name"] == "spyke_plasma_v1.safetensors"
    resp = await client.get(f"/jobs/{job['id']}/image")
    assert resp.status == 200 and resp.content_type == "image/png"
    img_path = Path(done["output"]["fileName"])
    assert img_path.suffix == ".png"
    data = await resp.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x", "resolution": {"width": 1024, "height": 1024}}, 400, "resolution_exceeds_profile"),
        ({"prompt": "x", "resolution": {"width": 512, "height": 776}}, 400, "resolution_exceeds_profile"),
        ({"prompt": "x", "resolution": {"width": 500, "height": 768}}, 400, "invalid_field"),
        ({"prompt": "x", "batchSize": 2}, 400, "batch_size_not_supported"),
        ({"prompt": "x", "batch_size": 4}, 400, "batch_size_not_supported"),
        ({"prompt": "x", "batchSize": True}, 400, "invalid_field"),  # not a batch size at all
        ({"prompt": "x", "batchSize": "1"}, 400, "invalid_field"),
        ({"prompt": "x", "batchSize": 1.5}, 400, "invalid_field"),  # 1.0 is the integer 1 in JSON Schema
        ({"prompt": "x", "bogus": 1}, 400, "unknown_field"),
        ({"prompt": "x", "steps": "many"}, 400, "invalid_field"),
        ({"prompt": "x", "controlnetStrength": 0.95}, 400, "invalid_field"),
        ({"negativePrompt": "x"}, 400, "invalid_field"),
        ({"prompt": "x", "loraId": "nope"}, 400, "lora_not_found"),
        ({"prompt": "x", "loraId": "../etc/passwd"}, 400, "invalid_field"),
        ({"prompt": "x", "loraId": "a/b"}, 400, "invalid_field"),
        ({"prompt": "x", "checkpoint": "missing.safetensors"}, 400, "checkpoint_not_found"),
        ({"prompt": "x", "checkpoint": "..\\x.ckpt"}, 400, "invalid_field"),
        ({"prompt": "x", "poseImagePath": "/nonexistent/pose.png"}, 400, "pose_image_invalid"),
        ({"prompt": "x", "poseImagePath": "relative.png"}, 400, "pose_image_invalid"),
        # Several problems at once: the same one is reported every time (pose, checkpoint, then LoRA).
        ({"prompt": "x", "checkpoint": "missing.safetensors", "loraId": "nope"}, 400, "checkpoint_not_found"),
        ({"prompt": "x", "loraId": "nope", "poseImagePath": "/nonexistent/pose.png"}, 400, "pose_image_invalid"),
    ],
)
async def test_refusals_have_stable_codes_and_never_reach_the_backend(client, backend, body, status, code) -> None:
    resp = await client.post("/jobs", json=body)
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code and err["message"]
    assert backend.runs == 0
    assert (await (await client.get("/jobs")).json())["jobs"] == []


async def test_resolution_error_names_the_limit_and_profile(client) -> None:
    resp = await client.post("/jobs", json={"prompt": "x", "resolution": {"width": 1024, "height": 1024}})
    err = (await resp.json())["error"]
    assert "512x768" in err["message"] and "m1pro-16gb" in err["message"]
    assert err["details"]["limit"] == {"maxWidth": 512, "maxHeight": 768}


async def test_undecodable_pose_image_is_refused(client, tmp_path) -> None:
    bad = tmp_path / "pose.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    resp = await client.post("/jobs", json={"prompt": "x", "poseImagePath": str(bad)})
    assert (await resp.json())["error"]["code"] == "pose_image_invalid"


async def test_pose_image_selects_the_controlnet_template(client, tmp_path) -> None:
    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 96), (255, 255, 255)).save(pose)
    job = await submit_full(client, loraId="spyke_plasma_v1", poseImagePath=str(pose), controlnetStrength=0.5)
    assert job["workflowTemplate"] == "txt2img-pose-lora"
    assert job["workflow"]["14"]["inputs"]["strength"] == 0.5
    assert job["workflow"]["12"]["inputs"]["image"] == "pose.png"
    no_lora = await submit(client, poseImagePath=str(pose))
    assert no_lora["workflowTemplate"] == "txt2img-pose"
    assert no_lora["params"]["controlnetStrength"] == 0.65


async def test_bad_json_and_too_large_bodies(client, settings) -> None:
    resp = await client.post("/jobs", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    resp = await client.post("/jobs", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    big = b'{"prompt": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    resp = await client.post("/jobs", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "payload_too_large"


async def test_unknown_job_is_404(client) -> None:
    for method, path in (("GET", "/jobs/nope"), ("GET", "/jobs/nope/image"), ("POST", "/jobs/nope/cancel")):
        resp = await client.request(method, path)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "job_not_found"


async def test_three_jobs_run_fifo_one_at_a_time(client, backend) -> None:
    backend.auto_release = False
    jobs = [await submit(client, seed=i) for i in range(3)]
    first = await wait_status(client, jobs[0]["id"], {"running"})
    assert first["status"] == "running"
    for j in jobs[1:]:
        assert (await (await client.get(f"/jobs/{j['id']}")).json())["status"] == "queued"
    health = await (await client.get("/health")).json()
    assert health["queueDepth"] == 2 and health["runningJob"] == jobs[0]["id"]
    for j in jobs:
        backend.release(j["id"])
    for j in jobs:
        await wait_status(client, j["id"], {"succeeded"})
    assert backend.started == [j["id"] for j in jobs]
    listed = (await (await client.get("/jobs")).json())["jobs"]
    assert [j["id"] for j in listed] == [j["id"] for j in reversed(jobs)]  # newest first
    only = (await (await client.get("/jobs?status=succeeded&limit=2")).json())["jobs"]
    assert len(only) == 2


async def test_cancel_queued_and_running(client, backend) -> None:
    backend.auto_release = False
    running = await submit(client, seed=1)
    queued = await submit(client, seed=2)
    await wait_status(client, running["id"], {"running"})
    resp = await client.post(f"/jobs/{queued['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    resp = await client.post(f"/jobs/{running['id']}/cancel")
    assert resp.status == 202
    done = await wait_status(client, running["id"], {"cancelled"})
    assert done["error"] is None
    assert backend.started == [running["id"]]  # the queued one never reached the backend
    again = await client.post(f"/jobs/{running['id']}/cancel")
    assert again.status == 409 and (await again.json())["error"]["code"] == "invalid_state"
    img = await client.get(f"/jobs/{running['id']}/image")
    assert img.status == 409 and (await img.json())["error"]["code"] == "job_not_finished"


async def test_lost_prompt_is_requeued_once_then_failed(client, backend) -> None:
    backend.script = ["lose", "ok"]
    job = await submit(client)
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["attempts"] == 1 and backend.runs == 2

    backend.script = ["lose", "lose"]
    job = await submit(client)
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "prompt_lost"


async def test_execution_failure_is_reported_with_code(client, backend) -> None:
    backend.script = ["fail"]
    job = await submit(client)
    done = await wait_status(client, job["id"], {"failed"})
    assert done["error"]["code"] == "execution_error" and "KSampler" in done["error"]["message"]


async def test_events_stream_job_lifecycle(client, backend) -> None:
    ws = await client.ws_connect("/events")
    job = await submit(client)
    seen = []
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), 10)
        if msg["job"]["id"] == job["id"]:
            seen.append(msg["type"])
        if msg["type"] == "job.succeeded":
            break
    assert seen[0] == "job.queued" and seen[1] == "job.started"
    assert seen.count("job.progress") == 3 and seen[-1] == "job.succeeded"

    async def last_event(job_id: str, kind: str) -> dict:
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), 10)
            if msg["job"]["id"] == job_id and msg["type"] == kind:
                return msg["job"]

    backend.script = ["fail"]
    failing = await submit(client)
    failed = await last_event(failing["id"], "job.failed")
    assert failed["status"] == "failed" and failed["error"]["code"] == "execution_error"
    assert "KSampler" in failed["error"]["message"]

    backend.auto_release = False
    running = await submit(client)
    await last_event(running["id"], "job.started")
    assert (await client.post(f"/jobs/{running['id']}/cancel")).status == 202
    cancelled = await last_event(running["id"], "job.cancelled")
    assert cancelled["status"] == "cancelled" and cancelled["error"] is None
    await ws.close()


async def test_restart_runs_queued_jobs_and_reconciles_running_one(aiohttp_client, settings) -> None:
    first = ScriptedBackend()
    first.auto_release = False
    client = await aiohttp_client(create_app(settings, first))
    running = await submit(client, seed=1)
    queued = await submit(client, seed=2)
    await wait_accepted(client, running["id"])
    await client.close()  # the daemon stops with one job running and one queued

    second = ScriptedBackend()
    client = await aiohttp_client(create_app(settings, second))
    a = await wait_status(client, running["id"], {"succeeded"})
    b = await wait_status(client, queued["id"], {"succeeded"})
    assert second.started == [running["id"], queued["id"]]  # the running one is picked up first
    assert a["promptId"] == f"p-{running['id']}-1"  # followed by its prompt id, not resubmitted
    assert b["status"] == "succeeded"


async def test_job_lost_again_after_its_restart_requeue_fails_lost_on_restart(aiohttp_client, settings) -> None:
    first = ScriptedBackend()
    first.auto_release = False
    client = await aiohttp_client(create_app(settings, first))
    running = await submit(client)
    await wait_accepted(client, running["id"])
    await client.close()  # the daemon stops while the job runs

    second = ScriptedBackend()
    second.script = ["lose", "lose"]  # lost when reconciled, re-queued once, lost again
    client = await aiohttp_client(create_app(settings, second))
    done = await wait_status(client, running["id"], {"succeeded", "failed"})
    assert second.runs == 2 and done["attempts"] == 1
    assert done["status"] == "failed" and done["error"]["code"] == "lost_on_restart"


async def test_template_edits_reach_the_next_job_and_a_broken_edit_keeps_the_last_good(aiohttp_client,
                                                                                          tmp_path) -> None:
    workflows = tmp_path / "workflows"
    shutil.copytree(asset_path(WORKFLOWS), workflows)
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", workflows_dir=workflows)
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    template = workflows / "txt2img.json"  # a job without loraId uses it
    graph = json.loads(template.read_text())
    # cfg, steps, sizes ... are slots the job always fills; an input outside the slots shows the edit.
    assert graph["8"]["inputs"]["filename_prefix"] == "plasma-sidecar/txt2img"
    graph["8"]["inputs"]["filename_prefix"] = "plasma-sidecar/edited"

    async def until(condition, content: str, timeout: float = 15):
        # The watcher may start watching just after a write; rewriting the same content is harmless.
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() >= deadline:
                raise AssertionError("the template change was not picked up in time")
            template.write_text(content)
            for _ in range(10):
                result = await condition()
                if result:
                    return result
                await asyncio.sleep(0.1)

    async def edited_job():
        job = await submit_full(client)
        return job if job["workflow"]["8"]["inputs"]["filename_prefix"] == "plasma-sidecar/edited" else None

    job = await until(edited_job, json.dumps(graph, indent=1))
    assert job["workflowTemplate"] == "txt2img" and job["workflow"]["6"]["inputs"]["cfg"] == 7.0
    assert (await (await client.get("/health")).json())["templateError"] is None

    async def broken_health():
        health = await (await client.get("/health")).json()
        return health if health["templateError"] else None

    health = await until(broken_health, "{ not json")
    assert "txt2img.json" in health["templateError"] and health["status"] == "ok"
    assert any("last good" in w for w in health["warnings"])
    job = await submit_full(client)  # still accepted, on the last good template
    assert job["workflow"]["8"]["inputs"]["filename_prefix"] == "plasma-sidecar/edited"
    assert (await wait_status(client, job["id"], {"succeeded", "failed"}))["status"] == "succeeded"


async def test_health_and_openapi(client) -> None:
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["mps"] is False and health["comfyui"] is False
    assert health["profile"] == "m1pro-16gb" and "txt2img-lora" in health["templates"]
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    req = spec["components"]["schemas"]["JobRequest"]
    assert "loraId" in req["properties"] and req["additionalProperties"] is False
    assert "/jobs/{id}/cancel" in spec["paths"]


class DiskCheckingBackend(ScriptedBackend):
    """Reads the job's row from disk the moment the prompt id is recorded: that is when a ComfyUI
    backend posts the prompt, so a daemon killed right then must find the job running with its id."""

    def __init__(self, db_path: Path):
        super().__init__()
        self.db_path = db_path
        self.on_disk: list[tuple[str, str | None]] = []

    async def run(self, ctx):
        import sqlite3

        await ctx.on_prompt_id(f"p-{ctx.job_id}")  # before any other await, as the worst case
        with sqlite3.connect(self.db_path) as conn:
            self.on_disk.append(conn.execute("SELECT status, prompt_id FROM jobs WHERE id = ?",
                                             (ctx.job_id,)).fetchone())
        return await super().run(ctx)


async def test_prompt_id_is_never_on_disk_without_the_running_state(aiohttp_client, settings) -> None:
    backend = DiskCheckingBackend(settings.db_path)
    client = await aiohttp_client(create_app(settings, backend))
    jobs = [await submit(client, seed=seed) for seed in (1, 2, 3)]
    for job in jobs:
        await wait_status(client, job["id"], {"succeeded"})
    assert backend.on_disk == [("running", f"p-{job['id']}") for job in jobs]


class CountingBackend(ScriptedBackend):
    def __init__(self):
        super().__init__()
        self.listings: list[str] = []

    async def list_models(self, folder: str):
        self.listings.append(folder)
        return await super().list_models(folder)


async def test_recent_model_listing_serves_hits_and_a_miss_always_asks_again(aiohttp_client, settings) -> None:
    backend = CountingBackend()
    client = await aiohttp_client(create_app(settings, backend))
    await submit(client, loraId="spyke_plasma_v1")
    await submit(client, loraId="spyke_plasma_v1")
    assert sorted(backend.listings) == ["checkpoints", "loras"]  # the second job was checked from the listing

    backend.models["loras"].append("june_v1.safetensors")  # installed a moment ago: found, not refused
    job = await submit(client, loraId="june_v1")
    assert job["params"]["loraId"] == "june_v1" and backend.listings.count("loras") == 2

    resp = await client.post("/jobs", json={"prompt": "x", "loraId": "draster_v1"})
    assert (await resp.json())["error"]["code"] == "lora_not_found"
    assert backend.listings.count("loras") == 3  # refused on a fresh listing, never on a cached one


async def test_batch_size_one_is_accepted_in_either_spelling(client) -> None:
    for field in ("batchSize", "batch_size"):
        resp = await client.post("/jobs", json={"prompt": "x", field: 1})
        assert resp.status == 202, await resp.text()


async def test_a_whole_workflow_names_its_lora_file_exactly(client, backend) -> None:
    done = await wait_status(client, (await submit(client, loraId="spyke_plasma_v1", seed=5))["id"], {"succeeded"})
    again = await client.post("/jobs", json={"workflow": done["workflow"]})
    assert again.status == 202, await again.text()
    rerun = await again.json()
    assert rerun["params"]["loraId"] == "spyke_plasma_v1"
    await wait_status(client, rerun["id"], {"succeeded"})

    wrong = {k: dict(v, inputs=dict(v["inputs"])) for k, v in done["workflow"].items()}
    lora_node = next(n for n in wrong.values() if n["class_type"] == "LoraLoader")
    lora_node["inputs"]["lora_name"] = "spyke_plasma_v1.ckpt"  # same stem, a file that is not there
    runs = backend.runs
    resp = await client.post("/jobs", json={"workflow": wrong})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "lora_not_found"
    assert backend.runs == runs  # refused before it reached the backend
