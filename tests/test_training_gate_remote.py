"""The quality gate stops a remote run before anything is rented: a set that is not ready answers 400
`dataset_not_ready` and the fake vast.ai server sees no request at all (no offer search, no instance);
the same set with `force` rents, trains and destroys as usual, and the run records `force`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_vast import FakeVast
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    app_client,
    client_key,
    dataset,
    make_settings,
    remote_settings,
    trainer_env,
    wait_run,
)

KEY = "vast-test-key-0123456789"


@pytest.fixture
async def vast(tmp_path: Path, trainer_env):
    fake = await FakeVast(tmp_path / "vast", KEY, trainer_env).start()
    yield fake
    left = await fake.close()
    assert not left, f"instances left running on the fake vast.ai: {left}"


async def test_a_set_that_is_not_ready_rents_nothing_and_force_rents_and_is_recorded(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    payload = {"datasetDir": str(dataset), "outputName": "spyke", "steps": 6, "saveEveryNSteps": 2,
               "preset": "character", "remote": {"provider": "vast"}}
    resp = await client.post("/loras/train", json=payload)  # three 64 px images
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "dataset_not_ready"
    checks = {f["check"] for f in err["details"]["findings"]}
    assert {"count", "size"} <= checks  # (its flat-colour images are also blank and alike)
    assert vast.requests == [] and vast.instances == {}  # not even an offer search
    assert (await (await client.get("/loras/runs")).json())["runs"] == []

    resp = await client.post("/loras/train", json={**payload, "force": True})
    assert resp.status == 202, await resp.text()
    done = await wait_run(client, (await resp.json())["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done["error"]
    assert done["params"]["force"] is True and done["params"]["preset"] == "character"
    assert len(vast.instances) == 1 and vast.alive() == []


async def test_a_flux_character_on_ai_toolkit_gets_the_preset_s_values_in_the_plan_and_the_run(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    payload = {"datasetDir": str(dataset), "outputName": "spyke", "trainer": "ai-toolkit", "family": "flux",
               "baseModel": "black-forest-labs/FLUX.1-dev", "preset": "character", "remote": {"provider": "vast"}}
    plan = await client.post("/loras/estimate", json=payload)
    assert plan.status == 200, await plan.text()
    assert (await plan.json())["steps"] == 2000  # ai-toolkit's example length for Flux
    assert vast.instances == {}
    refused = await client.post("/loras/train", json=payload)  # three 64 px images: 1024 px asked
    err = (await refused.json())["error"]
    assert err["code"] == "dataset_not_ready" and err["details"]["minSide"] == 1024 and err["details"]["family"] == "flux"
    assert vast.instances == {}
