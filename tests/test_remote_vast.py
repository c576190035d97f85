"""Remote training on vast.ai: the real `vastai` SDK against a fake vast.ai server (tests/fake_vast.py), whose
instances are in-process asyncssh servers running the fake kohya trainer. Asserted: the SDK sends what
the fixture recorded; the offer is chosen under the limits and said why; destroy is called on every
ending (success, failure, cancel, the cost guard, an instance lost, the reaper after a restart); the LoRA
installed is byte-identical to the one on the instance; the API key never shows; a fake that still has an
instance at teardown fails the test."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sidecar.remote.provider import Limits, label_for
from sidecar.config.remote import KOHYA_COMMIT, VastSettings
from sidecar.remote.vast import VastProvider
from tests.fake_vast import FIXTURE, FakeVast
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    app_client,
    client_key,
    dataset,
    hold_trainer,
    make_settings,
    remote_settings,
    submit,
    trainer_env,
    wait_run,
)

KEY = "vast-test-key-0123456789"
VAST = {"provider": "vast"}
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
async def vast(tmp_path: Path, trainer_env):
    fake = await FakeVast(tmp_path / "vast", KEY, trainer_env).start()
    yield fake
    left = await fake.close()
    assert not left, f"instances left running on the fake vast.ai: {left}"


def settings_for(tmp_path: Path, client_key: Path, vast: FakeVast, **limits):
    return make_settings(tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url, **limits))


async def test_the_sdk_sends_the_requests_the_fixture_recorded(tmp_path: Path, client_key, vast) -> None:
    provider = VastProvider(VastSettings(api_key=KEY, server_url=vast.url, identity_file=client_key))
    offers = await provider.search(Limits(0.6, 3, 2, 16, 12.1, 0.98, 40))
    assert [o.id for o in offers] == ["103", "102"]  # 12 GB, $1.20/h and reliability 0.91 filtered out by vast
    inst = await provider.create(offers[0], "plasma-sidecar-run-0123", "#!/bin/bash\necho onstart\n")
    await provider.status(inst.id)
    await provider.list_instances()
    await provider.destroy(inst.id)
    assert (await provider.status(inst.id)).state == "gone"
    await provider.destroy(inst.id)  # twice is fine: already gone
    recorded = json.loads(FIXTURE.read_text())["calls"]
    sent = vast.requests[:len(recorded)]
    for want, got in zip(recorded, sent):
        path = got["path"].replace(inst.id, "7835610").replace("/asks/103/", f"/asks/{recorded[1]['path'].split('/')[4]}/")
        assert (got["method"], path, got["query"]) == (want["method"], want["path"], want["query"]), want["call"]
        if isinstance(want["json"], dict) and want["call"] != "attach SSH key":
            assert sorted(got["json"]) == sorted(want["json"]), want["call"]
    assert all(h == f"Bearer {KEY}" for h in vast.auth_headers)


async def test_a_run_on_vast_rents_the_cheapest_fitting_offer_trains_there_and_destroys_it(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    async with client.ws_connect("/events") as ws:
        run = await submit(client, dataset, {**VAST, "maxPricePerHour": 0.5})
        kinds = []
        while not kinds or kinds[-1] not in ("training.succeeded", "training.failed"):
            event = json.loads((await ws.receive(timeout=30)).data)
            kinds.append(event["type"])
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "succeeded", done["error"]
    # /events shows a remote run as a local one: started, progress, each checkpoint, succeeded.
    assert kinds.count("training.checkpoint") == 3 and "training.progress" in kinds
    remote = done["remote"]
    (instance_id,) = vast.instances
    assert vast.destroyed == [instance_id] and remote["state"] == "destroyed"
    assert remote["instance"] == str(instance_id) and remote["gpu"] == "RTX 3090"
    assert "lowest expected cost" in remote["why"] and remote["costSoFar"] > 0
    row = vast.instances[instance_id]
    assert row["label"] == label_for(run["id"]) and row["image_uuid"].startswith("pytorch/pytorch")
    assert KOHYA_COMMIT in vast.onstart[instance_id] and "sd-scripts" in vast.onstart[instance_id]
    there = vast.hosts[instance_id].home / "plasma-runs" / label_for(run["id"]) / "output" / "spyke.safetensors"
    assert Path(done["finalFile"]).read_bytes() == there.read_bytes()
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6]
    # The key went only into the SDK's Authorization header: not in an answer, not in the log.
    for body in (json.dumps(done), json.dumps(await (await client.get("/loras/runs")).json()), caplog.text):
        assert KEY not in body


async def test_no_offer_under_the_limits_rents_nothing_and_says_which_limit(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    resp = await client.post("/loras/estimate", json={"datasetDir": str(dataset), "outputName": "spyke",
                                                      "remote": {**VAST, "maxPricePerHour": 0.05}})
    assert resp.status == 409
    err = (await resp.json())["error"]
    assert err["code"] == "no_offer_under_limits" and "$0.05/h" in err["message"]
    run = await submit(client, dataset, {**VAST, "maxPricePerHour": 0.05})
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "failed" and done["error"]["code"] == "no_offer_under_limits"
    assert vast.instances == {}


async def test_estimate_prints_steps_time_cost_offer_and_why_without_renting(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    resp = await client.post("/loras/estimate", json={"datasetDir": str(dataset), "outputName": "spyke",
                                                      "steps": 1000, "remote": VAST})
    assert resp.status == 200, await resp.text()
    plan = await resp.json()
    assert plan["steps"] == 1000 and plan["offer"]["id"] == "103" and plan["offer"]["gpu"] == "RTX 3090"
    assert plan["expectedCost"] == pytest.approx(plan["hoursThere"] * 0.22, abs=0.01)
    assert "lowest expected cost" in plan["why"] and plan["offersConsidered"] == 2
    assert vast.instances == {}


async def test_a_refused_rental_fails_the_run_and_rents_nothing(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    vast.refuse_create = True
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    run = await submit(client, dataset, VAST)
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "failed" and done["error"]["code"] == "remote_unavailable"
    assert "no longer available" in done["error"]["message"]
    assert vast.alive() == []


async def test_the_cost_guard_stops_the_run_keeps_the_last_checkpoint_and_resume_finishes_it(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, trainer_env) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.1"
    gate = hold_trainer(trainer_env, 4)  # mid-run when the guard looks, however slow the machine
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    run = await submit(client, dataset, {**VAST, "maxTotalCost": 0.5}, steps=24)
    await wait_run(client, run["id"], lambda b: len(b["checkpoints"]) >= 1)
    (first,) = vast.instances
    vast.instances[first]["start_date"] -= 3 * 3600  # vast.ai's clock: 3 h rented at $0.22/h = $0.66
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "failed" and done["error"]["code"] == "remote_cost_limit", done["error"]
    assert done["remote"]["costSoFar"] >= 0.5 and vast.destroyed == [first]
    last = done["error"]["details"]["lastCheckpointStep"]
    assert last and last == max(c["step"] for c in done["checkpoints"]) and done["step"] < 24
    assert Path(done["checkpoints"][-1]["path"]).is_file()
    # Resumed, it continues from that checkpoint's state on a new instance, the limit applying afresh.
    gate.touch()
    resp = await client.post(f"/loras/{run['id']}/resume")
    assert resp.status == 202, await resp.text()
    again = await wait_run(client, run["id"], ENDED)
    assert again["status"] == "succeeded", again["error"]
    second = max(vast.instances)
    assert vast.destroyed == [first, second] and again["remote"]["instances"] == 2
    argv = json.loads(Path(trainer_env["FAKE_KOHYA_ARGV_FILE"]).read_text())
    assert any(a.startswith("--resume=") and f"step{last:08d}-state" in a for a in argv)
    assert again["remote"]["costSoFar"] >= done["remote"]["costSoFar"]


async def test_a_lost_instance_is_replaced_and_training_resumes_from_the_last_pulled_state(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, trainer_env) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.15"
    client = await app_client(aiohttp_client, settings_for(tmp_path, client_key, vast))
    run = await submit(client, dataset, VAST, steps=10)
    # Once a checkpoint's training state is here too (what a resume elsewhere starts from):
    await wait_run(client, run["id"], lambda b: any(Path(b["outputDir"]).glob("spyke-step*-state")))
    (first,) = vast.instances
    await vast.lose(first)
    done = await wait_run(client, run["id"], ENDED, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    second = max(vast.instances)
    assert second != first and vast.destroyed == [second] and done["remote"]["instances"] == 2
    argv = json.loads(Path(trainer_env["FAKE_KOHYA_ARGV_FILE"]).read_text())
    assert any(a.startswith("--resume=") for a in argv) and "--skip_until_initial_step" in argv
    assert any("was lost" in w for w in done["warnings"])


async def test_a_vast_ai_that_does_not_answer_in_time_is_remote_unavailable(tmp_path: Path, client_key, vast,
                                                                           monkeypatch) -> None:
    # The SDK's own timeout is per request and it retries: the daemon bounds the whole call itself.
    import sidecar.remote.vast as vast_module
    from sidecar.errors import RemoteUnavailable

    monkeypatch.setattr(vast_module, "CALL_TIMEOUT", 0.5)
    vast.delay = 3.0
    provider = VastProvider(VastSettings(api_key=KEY, server_url=vast.url, identity_file=client_key))
    with pytest.raises(RemoteUnavailable, match=r"did not answer \(search offers\) within 0.5 s"):
        await provider.search(Limits(0.6, 3, 2, 16, 12.1, 0.98, 40))
    with pytest.raises(RemoteUnavailable, match="within 0.5 s"):
        await provider.status("7835610")
    vast.delay = 0.0
