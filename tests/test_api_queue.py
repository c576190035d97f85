"""Queue controls over HTTP through the real app: groups of variations (seeds, FIFO, cancel together,
all-or-nothing against max_queue, Idempotency-Key), `front`, retry, pause/resume across a restart.
The scripted backend holds each job until the test releases it, so the order is exact."""

from __future__ import annotations

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import submit, wait_status

PROMPT = "spyke_plasma_v1, standing"


async def post(client, path: str, status: int, **body) -> dict:
    resp = await client.post(path, json=body) if body else await client.post(path)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_variations_queue_one_job_per_seed_under_a_group_run_fifo(client, backend) -> None:
    backend.auto_release = False
    group = await post(client, "/jobs", 202, prompt=PROMPT, seed=40, variations=3)
    ids = [j["id"] for j in group["jobs"]]
    assert [j["params"]["seed"] for j in group["jobs"]] == [40, 41, 42]
    assert {j["groupId"] for j in group["jobs"]} == {group["groupId"]} and group["counts"] == {"queued": 3}
    # Ordinary jobs with batch size 1: each its own EmptyLatentImage of one image.
    for job_id in ids:
        full = await (await client.get(f"/jobs/{job_id}")).json()
        latent = next(n for n in full["workflow"].values() if n["class_type"] == "EmptyLatentImage")
        assert latent["inputs"]["batch_size"] == 1
    for job_id in ids:
        backend.release(job_id)
    for job_id in ids:
        await wait_status(client, job_id, {"succeeded"})
    assert backend.started == ids and backend.most_active == 1
    listed = (await (await client.get(f"/jobs?group={group['groupId']}")).json())["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]  # newest first, only the group's
    other = await submit(client)
    assert other["groupId"] is None
    assert other["id"] not in {j["id"] for j in (await (await client.get(f"/jobs?group={group['groupId']}")).json())["jobs"]}
    got = await (await client.get(f"/groups/{group['groupId']}")).json()
    assert got["counts"] == {"succeeded": 3} and [j["id"] for j in got["jobs"]] == ids


async def test_variations_without_a_seed_draw_one_and_record_it(client, backend) -> None:
    group = await post(client, "/jobs", 202, prompt=PROMPT, variations=2)
    first, second = (j["params"]["seed"] for j in group["jobs"])
    assert second == first + 1


async def test_a_group_is_cancelled_together(client, backend) -> None:
    backend.auto_release = False
    group = await post(client, "/jobs", 202, prompt=PROMPT, seed=1, variations=4)
    ids = [j["id"] for j in group["jobs"]]
    await wait_status(client, ids[0], {"running"})
    answer = await post(client, f"/groups/{group['groupId']}/cancel", 200)
    assert [j["id"] for j in answer["jobs"]] == ids
    for job_id in ids:
        await wait_status(client, job_id, {"cancelled"})
    assert backend.started == ids[:1]  # none of the queued ones started
    health = await (await client.get("/health")).json()
    assert health["queueDepth"] == 0
    resp = await client.post("/groups/nope/cancel")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "group_not_found"


async def test_variations_are_refused_whole_past_max_queue_and_for_a_whole_workflow(aiohttp_client, tmp_path) -> None:
    backend = ScriptedBackend()
    backend.auto_release = False
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded", max_queue=3),
                                             backend))
    running = await submit(client)
    await wait_status(client, running["id"], {"running"})
    await post(client, "/jobs", 202, prompt=PROMPT, variations=2)
    refused = await post(client, "/jobs", 429, prompt=PROMPT, variations=2)
    assert refused["error"]["code"] == "queue_full" and refused["error"]["details"]["adding"] == 2
    assert (await (await client.get("/health")).json())["queueDepth"] == 2  # nothing of the refused group queued
    full = await (await client.get(f"/jobs/{running['id']}")).json()
    bad = await post(client, "/jobs", 400, workflow=full["workflow"], variations=2)
    assert bad["error"]["code"] == "invalid_field" and "variations" in bad["error"]["message"]
    for value in (0, 101, True, "2"):
        bad = await post(client, "/jobs", 400, prompt=PROMPT, variations=value)
        assert bad["error"]["details"]["field"] == "variations"
    high = await post(client, "/jobs", 400, prompt=PROMPT, seed=2**64 - 1, variations=2)
    assert high["error"]["details"]["field"] == "seed"


async def test_an_idempotent_variations_submit_answers_the_same_group(client, backend) -> None:
    headers = {"Idempotency-Key": "drafts-page-3"}
    body = {"prompt": PROMPT, "variations": 3}
    first = await client.post("/jobs", json=body, headers=headers)
    again = await client.post("/jobs", json=body, headers=headers)
    assert first.status == 202 and again.status == 200
    a, b = await first.json(), await again.json()
    assert a["groupId"] == b["groupId"] and [j["id"] for j in a["jobs"]] == [j["id"] for j in b["jobs"]]
    assert len((await (await client.get("/jobs")).json())["jobs"]) == 3


async def test_front_jumps_the_queue_and_a_later_front_jumps_an_earlier_one(client, backend) -> None:
    backend.auto_release = False
    running = await submit(client, seed=0)
    await wait_status(client, running["id"], {"running"})
    a = await submit(client, seed=1)
    b = await submit(client, seed=2)
    fronted = await post(client, "/jobs", 202, prompt=PROMPT, seed=3, variations=2, front=True)
    urgent = await submit(client, seed=5, front=True)
    front_ids = [j["id"] for j in fronted["jobs"]]
    expected = [urgent["id"], *front_ids, a["id"], b["id"]]
    assert (await (await client.get("/queue")).json())["order"] == expected
    for job in [running["id"], *expected]:
        backend.release(job)
    for job in expected:
        await wait_status(client, job, {"succeeded"})
    assert backend.started == [running["id"], *expected]


async def test_retry_makes_a_new_job_with_the_same_request(client, backend) -> None:
    backend.script = ["fail"]
    failed = await submit(client, seed=77, steps=9, loraId="spyke_plasma_v1", loraStrength=0.7)
    await wait_status(client, failed["id"], {"failed"})
    retried = await post(client, f"/jobs/{failed['id']}/retry", 202)
    assert retried["retryOf"] == failed["id"] and retried["id"] != failed["id"]
    assert retried["params"] == failed["params"] and retried["workflowTemplate"] == failed["workflowTemplate"]
    done = await wait_status(client, retried["id"], {"succeeded"})
    assert done["retryOf"] == failed["id"]
    old = await (await client.get(f"/jobs/{failed['id']}")).json()
    assert old["status"] == "failed"  # the original keeps its record

    backend.auto_release = False
    running = await submit(client)
    await wait_status(client, running["id"], {"running"})
    refused = await post(client, f"/jobs/{running['id']}/retry", 409)
    assert refused["error"]["code"] == "invalid_state"
    assert (await client.post("/jobs/nope/retry")).status == 404
    backend.release(running["id"])

    # A whole-workflow job is retried with its workflow.
    whole = await (await client.get(f"/jobs/{failed['id']}")).json()
    resp = await client.post("/jobs", json={"workflow": whole["workflow"]})
    job = await resp.json()
    backend.release(job["id"])
    await wait_status(client, job["id"], {"succeeded"})
    again = await post(client, f"/jobs/{job['id']}/retry", 202)
    assert again["workflowTemplate"] is None and again["params"]["seed"] == 77
    backend.release(again["id"])
    await wait_status(client, again["id"], {"succeeded"})


async def test_retry_of_an_img2img_job_sends_one_init_source_and_says_when_it_is_gone(client, backend,
                                                                                      tmp_path) -> None:
    from PIL import Image

    from sidecar.api.keys import STORE

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 96), (200, 40, 90)).save(init)
    size = {"width": 64, "height": 96}
    base = await submit(client, seed=3, resolution=size)
    await wait_status(client, base["id"], {"succeeded"})
    from_job = await submit(client, seed=4, resolution=size, initJobId=base["id"], denoise=0.5)
    from_path = await submit(client, seed=5, resolution=size, initImagePath=str(init), denoise=0.4)
    for job in (from_job, from_path):
        await wait_status(client, job["id"], {"succeeded"})
    # The job's params record the init job and its image file; the retry names the job only.
    assert from_job["params"]["initJobId"] == base["id"] and from_job["params"]["initImagePath"]
    for job in (from_job, from_path):
        again = await post(client, f"/jobs/{job['id']}/retry", 202)
        assert again["params"] == job["params"] and again["workflowTemplate"] == "img2img"
        assert again["retryOf"] == job["id"]
        await wait_status(client, again["id"], {"succeeded"})

    # The init job removed since (retention, sidecar gc): a clear refusal, nothing queued.
    assert await client.app[STORE].delete_finished([base["id"]]) == 1
    refused = await post(client, f"/jobs/{from_job['id']}/retry", 400)
    error = refused["error"]
    assert error["code"] == "init_image_invalid" and error["details"]["retryOf"] == from_job["id"]
    assert base["id"] in error["message"] and "no longer exists" in error["message"], error
    assert error["details"]["field"] == "initJobId"
    # The init image file moved away: the same code, naming the field.
    init.rename(tmp_path / "moved.png")
    refused = await post(client, f"/jobs/{from_path['id']}/retry", 400)
    assert refused["error"]["code"] == "init_image_invalid" and refused["error"]["details"]["field"] == "initImagePath"
    assert f"Job {from_path['id']} cannot be retried as it was" in refused["error"]["message"]
    assert (await (await client.get("/queue")).json())["depth"] == 0


async def test_pause_holds_the_queue_across_a_restart_and_resume_runs_it(aiohttp_client, settings) -> None:
    first = ScriptedBackend()
    first.auto_release = False
    client = await aiohttp_client(create_app(settings, first))
    running = await submit(client, seed=1)
    await wait_status(client, running["id"], {"running"})
    state = await post(client, "/queue/pause", 200)
    assert state["paused"] is True and state["pausedAt"] and state["runningJob"] == running["id"]
    waiting = await submit(client, seed=2)
    first.release(running["id"])
    await wait_status(client, running["id"], {"succeeded"})  # the running job finishes
    health = await (await client.get("/health")).json()
    assert health["queue"]["paused"] is True and health["queue"]["order"] == [waiting["id"]]
    assert first.started == [running["id"]]  # nothing new started
    await client.close()

    second = ScriptedBackend()
    client = await aiohttp_client(create_app(settings, second))
    health = await (await client.get("/health")).json()
    assert health["queue"]["paused"] is True and health["queue"]["pausedAt"] == state["pausedAt"]
    assert (await (await client.get(f"/jobs/{waiting['id']}")).json())["status"] == "queued"
    assert second.started == []
    resumed = await post(client, "/queue/resume", 200)
    assert resumed["paused"] is False and resumed["pausedAt"] is None
    await wait_status(client, waiting["id"], {"succeeded"})
    assert second.started == [waiting["id"]]
    assert (await post(client, "/queue/resume", 200))["paused"] is False  # resuming twice is harmless


async def test_pause_and_resume_are_events_on_the_socket(client, backend) -> None:
    import asyncio
    import json

    backend.auto_release = False
    running = await submit(client, seed=1)
    await wait_status(client, running["id"], {"running"})
    waiting = await submit(client, seed=2)

    async def next_queue_event(ws) -> dict:
        async with asyncio.timeout(10):
            while True:
                event = json.loads((await ws.receive()).data)
                if event["type"].startswith("queue."):
                    return event

    async with client.ws_connect("/events") as ws:
        state = await post(client, "/queue/pause", 200)
        paused = await next_queue_event(ws)
        assert paused == {"type": "queue.paused", "queue": state}  # what GET /queue says, no second request
        assert paused["queue"]["paused"] is True and paused["queue"]["runningJob"] == running["id"]
        assert paused["queue"]["order"] == [waiting["id"]] and paused["queue"]["depth"] == 1
        await post(client, "/queue/pause", 200)  # already paused: nothing changes, no event
        resumed_state = await post(client, "/queue/resume", 200)
        resumed = await next_queue_event(ws)
        assert resumed["type"] == "queue.resumed" and resumed["queue"]["paused"] is False
        assert resumed["queue"]["pausedAt"] is None and resumed_state["paused"] is False
    for job_id in (running["id"], waiting["id"]):
        backend.release(job_id)
    await wait_status(client, waiting["id"], {"succeeded"})


@pytest.mark.parametrize("path", ["/queue/pause", "/queue/resume"])
async def test_queue_routes_pass_the_edge(client, path) -> None:
    resp = await client.post(path, headers={"Origin": "https://evil.example"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "origin_not_allowed"


async def test_the_queue_order_and_fronted_jobs_survive_a_restart(aiohttp_client, settings) -> None:
    first = ScriptedBackend()
    first.auto_release = False
    client = await aiohttp_client(create_app(settings, first))
    running = await submit(client, seed=0)
    await wait_status(client, running["id"], {"running"})
    await post(client, "/queue/pause", 200)
    a = await submit(client, seed=1)
    fronted = await submit(client, seed=2, front=True)
    b = await submit(client, seed=3)
    order = (await (await client.get("/queue")).json())["order"]
    assert order == [fronted["id"], a["id"], b["id"]]
    await client.close()

    second = ScriptedBackend()
    client = await aiohttp_client(create_app(settings, second))
    # The job that was running is followed to its end though the queue is paused; nothing new starts.
    await wait_status(client, running["id"], {"succeeded"})
    again = await (await client.get("/queue")).json()
    assert again["paused"] is True and again["order"] == order and second.started == [running["id"]]
    await post(client, "/queue/resume", 200)
    for job_id in order:
        await wait_status(client, job_id, {"succeeded"})
    assert second.started == [running["id"], *order]
