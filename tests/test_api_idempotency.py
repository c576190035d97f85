"""`Idempotency-Key` on POST /jobs: a retried submit returns the first job, never a second one; a key
reused for another body is refused; keys live in SQLite (a restart, even a kill -9 mid-burst, keeps
them) and expire after a day."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sidecar.api.app import create_app
from sidecar.api.keys import IDEMPOTENCY, STORE
from sidecar.jobs.idempotency import IdempotencyKeys
from tests.conftest_comfy import free_port
from tests.processes import wait_up
from tests.scripted_backend import ScriptedBackend


BODY = {"prompt": "spyke_plasma_v1, standing", "seed": 7}


async def post(client, body: dict, key: str | None) -> tuple[int, dict, aiohttp.ClientResponse]:
    resp = await client.post("/jobs", json=body, headers={"Idempotency-Key": key} if key else {})
    return resp.status, await resp.json(), resp


async def job_ids(client) -> list[str]:
    return [j["id"] for j in (await (await client.get("/jobs?limit=500")).json())["jobs"]]


async def test_a_retried_submit_returns_the_first_job(client, backend) -> None:
    status, first, _ = await post(client, BODY, "retry-1")
    assert status == 202
    # Same body, keys in another order: the same submission.
    status, again, resp = await post(client, dict(reversed(list(BODY.items()))), "retry-1")
    assert status == 200 and again["id"] == first["id"]
    assert resp.headers["Idempotent-Replayed"] == "true" and resp.headers["Location"] == f"/jobs/{first['id']}"
    assert await job_ids(client) == [first["id"]]
    status, other, _ = await post(client, BODY, "retry-2")  # another key: another job
    assert status == 202 and other["id"] != first["id"]
    status, plain, _ = await post(client, BODY, None)  # no key: every submit is a job, as before
    assert status == 202 and len(await job_ids(client)) == 3


async def test_a_key_reused_with_another_body_is_409(client) -> None:
    _, first, _ = await post(client, BODY, "k")
    status, body, _ = await post(client, {**BODY, "seed": 8}, "k")
    assert status == 409
    assert body["error"]["code"] == "idempotency_key_reused"
    assert body["error"]["details"] == {"idempotencyKey": "k", "jobId": first["id"]}
    assert await job_ids(client) == [first["id"]]


async def test_racing_retries_with_one_key_make_one_job(client) -> None:
    answers = await asyncio.gather(*(post(client, BODY, "race") for _ in range(8)))
    ids = {body["id"] for _, body, _ in answers}
    assert len(ids) == 1 and sorted(status for status, _, _ in answers) == [200] * 7 + [202]
    assert await job_ids(client) == list(ids)


@pytest.mark.parametrize("key", ["x" * 256, "tab\there"])
async def test_a_malformed_key_is_400_naming_the_header(client, key) -> None:
    status, body, _ = await post(client, BODY, key)
    assert status == 400 and body["error"]["details"]["field"] == "Idempotency-Key"
    assert await job_ids(client) == []


async def test_keys_survive_a_restart(aiohttp_client, settings) -> None:
    first_client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    _, first, _ = await post(first_client, BODY, "across-restarts")
    await first_client.close()
    second = await aiohttp_client(create_app(settings, ScriptedBackend()))
    status, again, _ = await post(second, BODY, "across-restarts")
    assert status == 200 and again["id"] == first["id"]
    status, _, _ = await post(second, {**BODY, "seed": 1}, "across-restarts")
    assert status == 409


async def test_an_expired_key_makes_a_new_job(aiohttp_client, settings) -> None:
    app = create_app(settings, ScriptedBackend())
    app[IDEMPOTENCY] = IdempotencyKeys(app[STORE], ttl=dt.timedelta(0))  # every key already a day old
    client = await aiohttp_client(app)
    _, first, _ = await post(client, BODY, "old")
    await asyncio.sleep(0.01)
    status, again, _ = await post(client, BODY, "old")
    assert status == 202 and again["id"] != first["id"]


# -- a real daemon killed with SIGKILL in the middle of a burst of keyed submits ------------------

def start_daemon(tmp_path: Path, port: int, comfy_url: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "sidecar.toml"  # empty: the user's own config never leaks in
    config.touch()
    with (tmp_path / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "data"), "--comfyui-url", comfy_url, "--config", str(config)],
            env={**os.environ}, stdout=log, stderr=subprocess.STDOUT)


async def test_retrying_every_submit_after_a_kill_9_mid_burst_makes_no_duplicate(tmp_path: Path, fake_comfy) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = [f"burst-{i}" for i in range(24)]
    bodies = {k: {"prompt": f"spyke_plasma_v1, page {i}", "seed": i, "steps": 4} for i, k in enumerate(keys)}

    async def send(http: aiohttp.ClientSession, key: str) -> str | None:
        try:
            async with http.post(f"{url}/jobs", json=bodies[key], headers={"Idempotency-Key": key}) as resp:
                return (await resp.json())["id"] if resp.status in (200, 202) else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None  # the connection died with the daemon: the client does not know

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        proc = start_daemon(tmp_path, port, fake_comfy.url)
        try:
            await wait_up(http, url, proc)
            burst = [asyncio.ensure_future(send(http, k)) for k in keys]
            while sum(t.done() for t in burst) < 3:  # kill once some answers are out, most are not
                await asyncio.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            first = dict(zip(keys, await asyncio.gather(*burst)))
            assert any(first.values())
            proc = start_daemon(tmp_path, port, fake_comfy.url)
            await wait_up(http, url, proc)
            retried = dict(zip(keys, await asyncio.gather(*(send(http, k) for k in keys))))
            async with http.get(f"{url}/jobs?limit=500") as resp:
                stored = (await resp.json())["jobs"]
        finally:
            proc.kill()
            proc.wait(10)
    assert all(retried.values())
    assert {k: v for k, v in first.items() if v} == {k: retried[k] for k, v in first.items() if v}
    assert sorted(j["id"] for j in stored) == sorted(retried.values())  # one job per key, none twice
