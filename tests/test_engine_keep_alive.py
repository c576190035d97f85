"""keep_alive: the embedded engine gives its models back after the idle time (0: after each job, -1:
never), /health says what is loaded, until when, and the daemon's memory. Real torch on the tiny models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.durations import parse_duration
from sidecar.errors import ConfigError
from sidecar.config import load_settings
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET

pytestmark = pytest.mark.engine


def settings(tmp_path: Path, engine_models: Path, keep_alive) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
                    checkpoint=TINY_CHECKPOINT, controlnet_model=TINY_CONTROLNET, steps=2, keep_alive=keep_alive)


async def run_job(client) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "loraId": "tiny-lora",
                                            "resolution": {"width": 64, "height": 64}})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    for _ in range(2400):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job["error"]
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("job did not finish")


async def health(client) -> dict:
    resp = await client.get("/health")
    assert resp.status == 200
    return await resp.json()


async def test_models_stay_loaded_until_keep_alive_then_are_unloaded(aiohttp_client, tmp_path, engine_models):
    client = await aiohttp_client(create_app(settings(tmp_path, engine_models, "2s")))
    before = await health(client)
    assert before["loaded"]["checkpoint"] is None and before["loaded"]["expiresAt"] is None
    await run_job(client)
    warm = await health(client)
    assert warm["loaded"]["checkpoint"] == TINY_CHECKPOINT and warm["loaded"]["loras"] == ["tiny-lora.safetensors"]
    assert warm["loaded"]["keepAlive"] == "2s" and warm["loaded"]["expiresAt"] is not None
    for _ in range(400):  # the unload comes about two seconds after the job; polled, not timed
        idle = await health(client)
        if idle["loaded"]["checkpoint"] is None:
            break
        await asyncio.sleep(0.05)
    assert idle["loaded"] == {"checkpoint": None, "loras": [], "controlnet": None, "keepAlive": "2s",
                              "expiresAt": None}
    assert idle["backend"]["idleUnloads"] == 1
    # The next job loads the checkpoint again and renders as before.
    await run_job(client)
    assert (await health(client))["backend"]["loaded"]["baseLoads"] == 2


async def test_keep_alive_0_unloads_after_each_job(aiohttp_client, tmp_path, engine_models):
    client = await aiohttp_client(create_app(settings(tmp_path, engine_models, 0)))
    await run_job(client)
    after = await health(client)
    assert after["loaded"]["checkpoint"] is None and after["loaded"]["keepAlive"] == "0s"
    await run_job(client)
    assert (await health(client))["backend"]["loaded"]["baseLoads"] == 2


async def test_keep_alive_minus_1_never_unloads_and_warm_jobs_reuse_the_model(aiohttp_client, tmp_path,
                                                                              engine_models):
    client = await aiohttp_client(create_app(settings(tmp_path, engine_models, -1)))
    await run_job(client)
    await run_job(client)
    body = await health(client)
    assert body["loaded"]["checkpoint"] == TINY_CHECKPOINT and body["loaded"]["keepAlive"] == "never"
    assert body["loaded"]["expiresAt"] is None and body["backend"]["loaded"]["baseLoads"] == 1


async def test_health_reports_the_process_memory(aiohttp_client, tmp_path, engine_models):
    client = await aiohttp_client(create_app(settings(tmp_path, engine_models, "5m")))
    memory = (await health(client))["memory"]
    # The test process has torch loaded: well over 50 MB resident, and the peak is at least that.
    assert memory["rssBytes"] > 50_000_000 and memory["peakRssBytes"] >= memory["rssBytes"] * 0.5


@pytest.mark.parametrize("given, seconds", [
    ("5m", 300), ("30s", 30), ("1h30m", 5400), ("250ms", 0.25), (300, 300), ("300", 300), (1.5, 1.5),
    (0, 0), ("0", 0), (-1, -1), ("-1", -1), ("-5m", -1), (-300, -1),
])
def test_keep_alive_takes_ollama_like_durations(given, seconds):
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "m", "", "5x", "nan", True, [5]])
def test_a_bad_keep_alive_names_the_key_and_the_forms(bad, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings({"keep_alive": bad, "data_dir": tmp_path})
    assert err.value.key == "keep_alive" and "duration" in str(err.value)


def test_keep_alive_from_the_environment(tmp_path):
    got, sources = load_settings({"data_dir": tmp_path}, environ={"SIDECAR_KEEP_ALIVE": "10m"})
    assert got.keep_alive == 600 and sources["keep_alive"] == "env SIDECAR_KEEP_ALIVE"
    assert Settings(data_dir=tmp_path).keep_alive == 300  # Ollama's default: five minutes
