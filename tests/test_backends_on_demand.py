"""`rent = "on-demand"`: a job no backend in the pool runs (here 1024x1024, past the laptop's m1pro-16gb
profile) makes the daemon rent the table's ComfyUI (fake vast.ai through the real `vastai` SDK, the instance
an in-process SSH host, a stand-in ComfyUI behind the tunnel), the job says so while it waits, runs there
once it joins, and the instance goes when idle. Two jobs rent one instance; a rent that fails fails the
jobs that waited; the default (`manual`) rents nothing."""

from __future__ import annotations

import asyncio

from sidecar.api.app import create_app
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status
from tests.test_backends_rented import settings_for, vast, wait_rental  # noqa: F401  (vast: the fixture)

BIG = {"width": 1024, "height": 1024}


async def test_a_job_only_the_table_can_run_rents_it_runs_there_and_it_goes_when_idle(vast, aiohttp_client,
                                                                                      tmp_path) -> None:
    settings = settings_for(tmp_path, vast, rent="on-demand", idle_minutes=0.02)
    laptop = ScriptedBackend()
    client = await aiohttp_client(create_app(settings, laptop))
    first = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "any", "resolution": BIG})
    assert first.status == 202, await first.text()
    job = await first.json()
    assert job["status"] == "queued" and "renting backend gpu" in job["backendReason"], job
    assert "m1pro-16gb" in job["backendReason"]  # why the laptop does not run it
    second = await client.post("/jobs", json={"prompt": "y", "steps": 2, "where": "gpu", "resolution": BIG})
    assert second.status == 202, await second.text()
    rental = await wait_rental(client, "gpu", {"serving", "failed"})
    assert rental["state"] == "serving", rental
    for job_id in (job["id"], (await second.json())["id"]):
        done = await wait_status(client, job_id, {"succeeded", "failed"}, timeout=20)
        assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
    assert len(vast.instances) == 1  # one rental for both jobs, never two at once
    [instance_id] = vast.instances
    assert vast.comfys[instance_id].prompt_posts == 2 and laptop.runs == 0
    gone = await wait_rental(client, "gpu", {"destroyed", "destroy_failed"}, timeout=15)
    assert "idle for" in gone["message"] and vast.alive() == [], gone
    # A job the laptop runs rents nothing.
    small = await client.post("/jobs", json={"prompt": "z", "steps": 2, "where": "any"})
    done = await wait_status(client, (await small.json())["id"], {"succeeded", "failed"}, timeout=10)
    assert (done["status"], done["backend"]) == ("succeeded", "local") and len(vast.instances) == 1


async def test_a_rent_that_fails_fails_the_waiting_jobs_with_the_reason(vast, aiohttp_client, tmp_path) -> None:
    settings = settings_for(tmp_path, vast, rent="on-demand", max_price_per_hour=0.05)  # every offer costs more
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    ids = []
    for _ in range(2):
        resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "gpu", "resolution": BIG})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["id"])
    for job_id in ids:
        failed = await wait_status(client, job_id, {"succeeded", "failed"}, timeout=15)
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "no_offer_under_limits", failed["error"]
        assert "gpu" in failed["error"]["message"] and "No offer fits the limits" in failed["error"]["message"]
    listed = await (await client.get("/backends")).json()
    assert [r["state"] for r in listed["rentals"]] == ["failed"]  # one rent tried for both
    assert vast.instances == {}


async def test_by_default_a_table_is_only_rented_by_hand(vast, aiohttp_client, tmp_path) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, vast), ScriptedBackend()))
    resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "any", "resolution": BIG})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "no_backend_admits"
    await asyncio.sleep(0.2)
    assert vast.instances == {} and (await (await client.get("/backends")).json())["rentals"] == []


async def test_jobs_waiting_for_a_rental_when_the_daemon_stops_are_rented_for_at_the_next_start(
        vast, aiohttp_client, tmp_path) -> None:
    vast.loading_reads = 10**6  # the first instance is still starting when the daemon stops
    settings = settings_for(tmp_path, vast, rent="on-demand", idle_minutes=0.02)
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "gpu", "resolution": BIG})
    job_id = (await resp.json())["id"]
    await wait_rental(client, "gpu", {"starting"})
    await client.close()  # a graceful stop: what it rented is destroyed, the job stays queued
    assert vast.alive() == []
    vast.loading_reads = 1
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    done = await wait_status(client, job_id, {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
    assert len(vast.instances) == 2
