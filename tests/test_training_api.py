"""The training API's contract through `create_app`: 202, profile limits, one training at a time,
no generation while training, training waits for a running job, 404s, OpenAPI."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.api.app import create_app
from sidecar.training.wire import TrainingRun, TrainingRunList
from tests.training_fixtures import (  # noqa: F401  (fixtures)
    backend,
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
    start_training,
    wait_run,
)


@pytest.fixture
def slow(monkeypatch):
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.05")


async def test_submit_answers_202_with_the_run(client, dataset_dir, fake_env) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "spyke",
                                                   "steps": 4, "saveEveryNSteps": 2, "seed": 42})
    assert resp.status == 202
    run = await resp.json()
    assert resp.headers["Location"] == f"/loras/{run['id']}/status"
    # kohya is configured, so it is the default engine; the rest are the canonical defaults.
    assert run["engine"] == "kohya" and run["status"] == "queued"
    assert run["params"] == {"steps": 4, "resolution": 512, "networkDim": 32, "networkAlpha": 16.0,
                             "learningRate": 0.0001, "saveEveryNSteps": 2, "seed": 42,
                             "checkpoint": "anything-v5.safetensors", "trainer": "kohya", "family": "sd15",
                             "baseModel": None, "samplePrompts": [], "sampleEvery": 2, "tracking": None, "preset": None, "force": True, "repeats": None,
                             "captionDropoutRate": None, "trainTextEncoder": None, "textEncoderLr": None}
    assert run["etaSeconds"] is None and run["checkpoints"] == []
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    # The bodies are what the OpenAPI document says they are (unknown fields would fail here).
    TrainingRun.model_validate(run)
    TrainingRun.model_validate(done)
    TrainingRunList.model_validate(await (await client.get("/loras/runs")).json())


async def test_training_asks_the_generation_backend_to_free_the_device_first(client, backend, dataset_dir,
                                                                            fake_env) -> None:
    assert backend.unloads == 0
    run = await start_training(client, dataset_dir)
    assert (await wait_run(client, run["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    assert backend.unloads == 1


@pytest.mark.parametrize("field", ["batchSize", "batch_size"])
async def test_batch_size_above_one_is_refused_naming_the_profile(client, dataset_dir, field: str) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "spyke",
                                                   field: 2})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "batch_size_not_supported"
    assert "m1pro-16gb" in body["error"]["message"] and body["error"]["details"]["limit"] == 1


async def test_batch_size_one_is_accepted(client, dataset_dir, fake_env) -> None:
    run = await start_training(client, dataset_dir, batchSize=1)
    assert (await wait_run(client, run["id"], {"succeeded", "failed"}))["status"] == "succeeded"


async def test_resolution_over_the_profile_is_refused(client, dataset_dir) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "s",
                                                   "resolution": 768})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "resolution_exceeds_profile"
    assert body["error"]["details"]["limit"] == 512


@pytest.mark.parametrize(("body", "code"), [
    ({"resolution": 500}, "invalid_field"),
    ({"steps": 0}, "invalid_field"),
    ({"bogus": 1}, "unknown_field"),
    ({"engine": "diffusers"}, "invalid_field"),
    ({"checkpoint": "missing.safetensors"}, "checkpoint_not_found"),
    ({"checkpoint": "../x.safetensors"}, "invalid_field"),
    ({"steps": "2"}, "invalid_field"),  # strict, as POST /jobs
    ({"seed": True}, "invalid_field"),
    ({"learningRate": float("nan")}, "invalid_field"),
    ({"datasetDir": "~nosuchuser/set"}, "dataset_invalid"),
])
async def test_invalid_requests(client, dataset_dir, body, code) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "s", **body})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == code


async def test_kohya_engine_without_kohya_is_a_clear_400(aiohttp_client, tmp_path, dataset_dir) -> None:
    from sidecar.api.app import create_app
    from sidecar.config import Settings
    from tests.scripted_backend import ScriptedBackend

    c = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded"), ScriptedBackend()))
    resp = await c.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "s", "engine": "kohya"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["details"]["field"] == "engine" and "kohya_dir" in body["error"]["message"]


async def test_second_training_is_409_while_one_runs(client, dataset_dir, fake_env, slow) -> None:
    run = await start_training(client, dataset_dir, steps=400)
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "other"})
    body = await resp.json()
    assert resp.status == 409 and body["error"]["code"] == "training_in_progress"
    assert body["error"]["details"]["training"]["id"] == run["id"]
    await client.post(f"/loras/{run['id']}/cancel")
    await wait_run(client, run["id"], {"cancelled"})
    # Once it ended, training is accepted again.
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "other",
                                                   "steps": 2, "engine": "kohya"})
    assert resp.status == 202


async def test_generation_during_training_is_409_with_its_progress(client, dataset_dir, fake_env, slow) -> None:
    run = await start_training(client, dataset_dir, steps=400)
    await wait_run(client, run["id"], {"running"})
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing"})
    body = await resp.json()
    assert resp.status == 409 and body["error"]["code"] == "training_in_progress"
    training = body["error"]["details"]["training"]
    assert training["id"] == run["id"] and training["total"] == 400 and "etaSeconds" in training
    assert isinstance(training["step"], int) and not isinstance(training["step"], bool)
    assert 0 <= training["step"] < 400
    # One gate, one message: a second training is refused by the same words.
    other = await (await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "o"})).json()
    for refusal in (body, other):
        assert refusal["error"]["code"] == "training_in_progress"
        assert refusal["error"]["message"].startswith(f"LoRA training {run['id']} holds the device (running, step ")
        assert refusal["error"]["message"].endswith("no generation and no other training until it ends.")
    health = await (await client.get("/health")).json()
    assert health["training"]["id"] == run["id"]
    await client.post(f"/loras/{run['id']}/cancel")
    await wait_run(client, run["id"], {"cancelled"})
    assert (await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing"})).status == 202


async def test_training_waits_for_the_running_generation_job(client, backend, dataset_dir, fake_env) -> None:
    backend.auto_release = False
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1"})).json()
    for _ in range(200):
        if (await (await client.get(f"/jobs/{job['id']}")).json())["status"] == "running":
            break
        await asyncio.sleep(0.02)
    run = await start_training(client, dataset_dir)
    await asyncio.sleep(0.3)
    assert (await (await client.get(f"/loras/{run['id']}/status")).json())["status"] == "queued"
    assert (await client.post("/jobs", json={"prompt": "x"})).status == 409  # queued training already refuses
    backend.release(job["id"])
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert (await (await client.get(f"/jobs/{job['id']}")).json())["status"] == "succeeded"


async def test_cancel_a_queued_run_frees_the_device(client, backend, dataset_dir, fake_env) -> None:
    backend.auto_release = False
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1"})).json()
    run = await start_training(client, dataset_dir)
    resp = await client.post(f"/loras/{run['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    backend.release(job["id"])
    assert (await client.post("/jobs", json={"prompt": "x"})).status == 202
    again = await client.post(f"/loras/{run['id']}/cancel")
    assert again.status == 409 and (await again.json())["error"]["code"] == "invalid_state"


async def test_unknown_run_is_404(client) -> None:
    for method, path in (("GET", "/loras/nope/status"), ("POST", "/loras/nope/cancel"), ("POST", "/loras/nope/resume")):
        resp = await client.request(method, path)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "training_not_found"


async def test_a_succeeded_run_does_not_resume(client, dataset_dir, fake_env) -> None:
    run = await start_training(client, dataset_dir, steps=2)
    await wait_run(client, run["id"], {"succeeded"})
    resp = await client.post(f"/loras/{run['id']}/resume")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_state"


async def test_runs_are_listed_newest_first(client, dataset_dir, fake_env) -> None:
    first = await start_training(client, dataset_dir, steps=2)
    await wait_run(client, first["id"], {"succeeded"})
    second = await start_training(client, dataset_dir, steps=2, outputName="spyke2")
    await wait_run(client, second["id"], {"succeeded"})
    runs = (await (await client.get("/loras/runs")).json())["runs"]
    assert [r["id"] for r in runs] == [second["id"], first["id"]]


async def test_openapi_describes_the_training_routes(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert "/loras/train" in doc["paths"] and "/loras/{id}/status" in doc["paths"]
    schemas = doc["components"]["schemas"]
    assert "datasetDir" in schemas["TrainRequest"]["properties"]


async def test_the_whole_loss_curve_is_kept_and_served_after_a_restart(aiohttp_client, client, settings, backend,
                                                                       dataset_dir, fake_env) -> None:
    run = await start_training(client, dataset_dir, steps=6)
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    curve = await (await client.get(f"/loras/{run['id']}/loss")).json()
    steps = [p["step"] for p in curve["points"]]
    # One point per step kohya logged a loss at, in order, ending where the run ended with its last loss.
    assert steps == sorted(set(steps)) and steps[-1] == 6 and curve["stepsLogged"] == len(steps) >= 3
    assert curve["points"][-1]["loss"] == pytest.approx(done["loss"]["last"], rel=1e-5)
    assert all(p["smoothed"] is not None for p in curve["points"])
    # Fewer points on request: spread over the run, first and last kept.
    two = await (await client.get(f"/loras/{run['id']}/loss?points=2")).json()
    assert [p["step"] for p in two["points"]] == [steps[0], 6] and two["stepsLogged"] == len(steps)
    # A daemon started again on the same data dir still has it (the status keeps only the last loss).
    await client.close()
    again = await aiohttp_client(create_app(settings, backend))
    assert (await (await again.get(f"/loras/{run['id']}/loss")).json()) == curve
    bad = await again.get(f"/loras/{run['id']}/loss?points=1")
    assert bad.status == 400 and (await bad.json())["error"]["details"]["field"] == "points"
    unknown = await again.get("/loras/nope/loss")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "training_not_found"
