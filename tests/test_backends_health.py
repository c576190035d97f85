"""Backend health: one killed mid-job is taken out of routing and its job re-runs once on another
(nothing lost, nothing run twice), it rejoins when it answers again, and a training on the laptop
stops only the laptop's rendering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.api.keys import DEVICE
from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from tests.fake_comfyui import DEFAULT_MODELS, FakeComfyUI
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status
from tests.test_backends_routing import overlaps, start_fake


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[dict[str, FakeComfyUI]]:
    servers = {name: await start_fake(tmp_path, name, DEFAULT_MODELS, step_delay=0.01, device="cuda")
               for name in ("alpha", "beta")}
    yield servers
    for fake in servers.values():
        await fake.stop()


@pytest.fixture
async def app_and_client(aiohttp_client, tmp_path, pair):
    settings = Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, comfyui_unavailable_deadline=30,
        backend_probe_interval=0.2, default_where="pool",
        backends=[BackendSpec(name=name, kind="comfyui", url=fake.url, profile="cuda-24gb", tags=("pool",),
                              local=False) for name, fake in pair.items()])
    app = create_app(settings, ScriptedBackend())
    return app, await aiohttp_client(app)


async def health_of(client) -> dict[str, dict]:
    return {b["name"]: b for b in (await (await client.get("/health")).json())["backends"]}


async def wait_state(client, name: str, state: str, timeout: float = 10) -> dict:
    for _ in range(int(timeout / 0.05)):
        b = (await health_of(client))[name]
        if b["state"] == state:
            return b
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {name} stayed {b['state']}")


async def test_a_backend_killed_mid_job_hands_it_over_once_and_rejoins(app_and_client, pair) -> None:
    _, client = app_and_client
    alpha, beta = pair["alpha"], pair["beta"]
    alpha.pause_at(2)
    resp = await client.post("/jobs", json={"prompt": "page 7", "steps": 4, "where": "alpha"})
    first = await resp.json()
    await alpha.wait_for(lambda: alpha.running_id is not None)
    await alpha.wait_paused()

    # where=alpha pins it there: killing alpha loses it once, but nothing else admits it; a pool job moves.
    resp = await client.post("/jobs", json={"prompt": "page 8", "steps": 4})  # default_where = pool
    second = await resp.json()
    done_second = await wait_status(client, second["id"], {"succeeded"}, timeout=20)
    assert done_second["backend"] == "beta"  # alpha was busy: the pool job went to the free one

    alpha_busy = (await health_of(client))["alpha"]
    assert alpha_busy["running"] == first["id"] and alpha_busy["state"] == "up"
    await alpha.kill()  # mid-job, like kill -9: its queue and history are gone
    down = await wait_state(client, "alpha", "down")
    assert down["reason"]
    job = await wait_status(client, first["id"], {"queued", "failed"}, timeout=10)
    assert job["status"] == "queued" and job["attempts"] == 1  # re-queued once, waiting for a backend named alpha
    assert job["backend"] is None and job["backendReason"] is None  # queued: no backend runs it (documented)
    listed = next(j for j in (await (await client.get("/jobs")).json())["jobs"] if j["id"] == first["id"])
    assert listed["status"] != "queued" or listed["backend"] is None

    alpha.resume()
    await alpha.restart()  # it answers again: back in routing, and the job runs there
    await wait_state(client, "alpha", "up")
    done = await wait_status(client, first["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"], done["attempts"]) == ("succeeded", "alpha", 1)
    assert len(alpha.history) == 1  # the restarted alpha ran it once; the killed run left nothing
    assert overlaps(beta) == []  # never two prompts at once there (alpha's killed prompt never ended: not counted)


async def test_a_pool_job_on_a_dying_backend_reruns_elsewhere_once(app_and_client, pair) -> None:
    _, client = app_and_client
    alpha, beta = pair["alpha"], pair["beta"]
    alpha.pause_at(2)
    beta.pause_at(2)  # each holds its job until told
    jobs = [await (await client.post("/jobs", json={"prompt": f"page {i}", "steps": 4, "seed": i})).json()
            for i in range(2)]  # one lands on each
    await alpha.wait_for(lambda: alpha.running_id is not None)
    await beta.wait_for(lambda: beta.running_id is not None)
    await alpha.kill()
    beta.resume()
    done = [await wait_status(client, j["id"], {"succeeded", "failed"}, timeout=30) for j in jobs]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"]
    assert {d["backend"] for d in done} == {"beta"}  # alpha's job re-ran on beta
    assert sorted(d["attempts"] for d in done) == [0, 1]  # exactly one re-run
    assert len(beta.history) == 2 and len(beta.executions) == 2  # each page rendered once there
    assert overlaps(beta) == []

    [lost_prompt] = alpha.accepted  # the one prompt alpha held when it died
    await alpha.restart()
    await wait_state(client, "alpha", "up")  # it rejoins
    # Its lost prompt is stopped there first, in case it had survived (so it can never finish twice).
    await alpha.wait_for(lambda: lost_prompt in alpha.interrupts)


async def test_a_rerun_jobs_preview_is_never_the_killed_attempts_frame(aiohttp_client, tmp_path, pair) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    alpha.preview_method = "latent2rgb"  # alpha sends previews, beta (run without --preview-method) none
    settings = Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, comfyui_unavailable_deadline=30,
        backend_probe_interval=0.2, default_where="pool", preview_interval=0.0,
        backends=[BackendSpec(name=name, kind="comfyui", url=fake.url, profile="cuda-24gb", tags=("pool",),
                              local=False) for name, fake in pair.items()])
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    alpha.pause_at(2)
    job = await (await client.post("/jobs", json={"prompt": "page 9", "steps": 4, "where": "pool"})).json()
    await alpha.wait_paused()
    for _ in range(200):  # the killed attempt's frame reached the daemon
        if (await client.get(f"/jobs/{job['id']}/preview")).status == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("alpha's preview never arrived")
    await alpha.kill()
    done = await wait_status(client, job["id"], {"succeeded", "failed"}, timeout=30)
    assert (done["status"], done["backend"], done["attempts"]) == ("succeeded", "beta", 1)
    resp = await client.get(f"/jobs/{job['id']}/preview")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "preview_not_found"
    alpha.resume()


async def test_training_on_the_laptop_stops_only_the_laptop(aiohttp_client, tmp_path, pair) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, backend_probe_interval=0.2,
        backends=[BackendSpec(name="alpha", kind="comfyui", url=pair["alpha"].url, local=False)])
    app = create_app(settings, ScriptedBackend())
    client = await aiohttp_client(app)
    device = app[DEVICE]
    device.training.open("run-1", lambda: {"id": "run-1", "status": "running", "step": 5, "total": 100})
    async with device.lock:  # the training holds this machine's device
        resp = await client.post("/jobs", json={"prompt": "x", "steps": 2})  # default where: local
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "training_in_progress"
        resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "alpha"})
        assert resp.status == 202
        done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
        assert (done["status"], done["backend"]) == ("succeeded", "alpha")
    device.training.close("run-1")


async def test_a_daemon_restarted_mid_job_collects_it_from_the_backend_that_ran_it(tmp_path, pair) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    alpha, beta = pair["alpha"], pair["beta"]
    settings = Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, backend_probe_interval=0.2,
        default_where="pool",
        backends=[BackendSpec(name=name, kind="comfyui", url=fake.url, tags=("pool",), local=False)
                  for name, fake in pair.items()])
    alpha.pause_at(2)
    async with TestClient(TestServer(create_app(settings, ScriptedBackend()))) as client:
        job = await (await client.post("/jobs", json={"prompt": "page 9", "steps": 4, "where": "alpha"})).json()
        await alpha.wait_paused()
    alpha.resume()  # the prompt finishes in alpha while the daemon is down
    await alpha.wait_for(lambda: len(alpha.history) == 1)
    async with TestClient(TestServer(create_app(settings, ScriptedBackend()))) as client:
        done = await wait_status(client, job["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"], done["attempts"]) == ("succeeded", "alpha", 0)
    assert alpha.prompt_posts == 1 and beta.prompt_posts == 0  # collected, never posted again


async def test_a_backend_leaving_and_rejoining_routing_is_announced_on_events(app_and_client, pair) -> None:
    _, client = app_and_client
    await wait_state(client, "alpha", "up")
    async with client.ws_connect("/events") as ws:
        await pair["alpha"].kill()

        async def next_backend_event() -> dict:
            while True:
                event = await ws.receive_json(timeout=10)
                if event["type"].startswith("backend."):
                    return event

        down = await next_backend_event()
        assert (down["type"], down["backend"]["name"], down["backend"]["state"]) == ("backend.down", "alpha", "down")
        assert down["backend"]["reason"] and down["backend"]["profile"] == "cuda-24gb"
        await pair["alpha"].restart()
        up = await next_backend_event()
        assert (up["type"], up["backend"]["name"], up["backend"]["state"], up["backend"]["device"]) == (
            "backend.up", "alpha", "up", "cuda")
