"""A remote run across the daemon's death: the real `sidecar serve` killed with SIGKILL while its run trains
on a (fake) vast.ai instance re-attaches at the next start without restarting training, and the instance
is destroyed when the run ends; instances of runs that are no longer active are destroyed by the reaper
at start and noted in their runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.storage_fixtures import s3_server  # noqa: F401  (fixture: moto's S3 server)

from sidecar.remote.provider import Limits, label_for
from sidecar.config.remote import VastSettings
from sidecar.remote.vast import VastProvider
from tests.conftest_comfy import free_port
from tests.fake_ssh_host import FakeHost, install_kohya
from tests.fake_vast import FakeVast
from tests.processes import wait_up
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
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
async def vast(tmp_path: Path, trainer_env):
    fake = await FakeVast(tmp_path / "vast", KEY, trainer_env).start()
    yield fake
    left = await fake.close()
    assert not left, f"instances left running on the fake vast.ai: {left}"


def start_daemon(tmp_path: Path, port: int, vast: FakeVast, client_key: Path,
                 ssh_host: FakeHost | None = None, extra: str = "") -> subprocess.Popen[bytes]:
    """`extra`: more TOML at the end of the configuration (a `[storage]` table)."""
    config = tmp_path / "sidecar.toml"
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))  # makes the base model
    ssh = settings.remote.ssh
    config.write_text(
        # Attached to a ComfyUI that is not there: no torch to import, and training needs no backend.
        f'comfyui_url = "http://127.0.0.1:9"\nmodels_dir = "{settings.models_path}"\n\n[remote]\npoll_interval = 0.05\n'
        f'stale_after = 1.0\nstatus_interval = 0.5\n\n[remote.vast]\nserver_url = "{vast.url}"\n'
        f'identity_file = "{client_key}"\nstart_timeout = 30\n'
        + (f'\n[remote.ssh]\nhost = "{ssh.host}"\nport = {ssh.port}\nidentity_file = "{ssh.identity_file}"\n'
           f'known_hosts = "{ssh.known_hosts}"\nkohya_dir = "{ssh.kohya_dir}"\npython = "{ssh.python}"\n'
           if ssh_host is not None else "") + extra)
    with (tmp_path / "daemon.log").open("ab") as log:
        # The key comes the way a user gives it: VAST_API_KEY in the environment.
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
             "--config", str(config)], env={**os.environ, "VAST_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT)


async def status(http: aiohttp.ClientSession, url: str, run_id: str, done, timeout: float = 60) -> dict:
    body: dict = {}
    for _ in range(int(timeout / 0.1)):
        async with http.get(f"{url}/loras/{run_id}/status") as resp:
            body = await resp.json()
        if done(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never got there: {body}")


@pytest.mark.parametrize("provider", ["vast", "ssh"])
async def test_a_run_reattaches_after_the_daemon_is_killed_and_its_instance_is_destroyed_at_the_end(
        tmp_path: Path, client_key, vast, dataset, trainer_env, provider) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.12"
    # Held at step 6 until the second daemon is up: killed and started again mid-training, on any machine.
    gate = hold_trainer(trainer_env, 6)
    ssh_host = None
    if provider == "ssh":
        ssh_host = FakeHost(tmp_path / "machine", [Path(f"{client_key}.pub").read_text()], "ssh-host", trainer_env)
        install_kohya(ssh_host.home)
        await ssh_host.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            proc = start_daemon(tmp_path, port, vast, client_key, ssh_host)
            try:
                await wait_up(http, url, proc)
                async with http.post(f"{url}/loras/train", json={
                        "datasetDir": str(dataset), "outputName": "spyke", "steps": 16, "saveEveryNSteps": 2, "force": True,
                        "remote": {"provider": provider}}) as resp:
                    assert resp.status == 202, await resp.text()
                    run_id = (await resp.json())["id"]
                await status(http, url, run_id, lambda b: b["step"] >= 4)
                proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
                await asyncio.to_thread(proc.wait, 10)
                host = ssh_host or vast.hosts[next(iter(vast.instances))]
                assert host.processes(), "the trainer stopped with the daemon"  # still training (and billing)
                proc = start_daemon(tmp_path, port, vast, client_key, ssh_host)
                await wait_up(http, url, proc)
                gate.touch()
                done = await status(http, url, run_id, lambda b: b["status"] in ENDED)
            finally:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        assert done["status"] == "succeeded", (done["error"], (tmp_path / "daemon.log").read_text()[-3000:])
        assert done["remote"]["state"] == "destroyed"
        assert done["remote"]["reattached"] >= 1 and done["remote"]["instances"] == 1
        if provider == "vast":
            assert vast.destroyed == list(vast.instances)
        assert not host.processes()
        assert sum("setsid nohup" in c for c in host.commands) == 1, "training was started again"
        there = host.home / "plasma-runs" / label_for(run_id) / "output" / "spyke.safetensors"
        assert Path(done["finalFile"]).read_bytes() == there.read_bytes()
        assert KEY not in (tmp_path / "daemon.log").read_text()
    finally:
        if ssh_host is not None:
            await ssh_host.close()


async def test_the_reaper_destroys_instances_of_runs_no_longer_active_at_start(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, trainer_env) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.2"
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url))
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, {"provider": "vast"}, steps=40)
    await wait_run(client, run["id"], lambda b: (b["remote"] or {}).get("state") == "training")
    vast.refuse_destroy = True  # vast.ai has a bad minute just as the run is cancelled
    await client.post(f"/loras/{run['id']}/cancel")
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "cancelled" and done["remote"]["state"] == "destroy_failed"
    # And an instance rented for the run a moment before a daemon died, never recorded with it.
    stray = await VastProvider(VastSettings(api_key=KEY, server_url=vast.url, identity_file=client_key)).create(
        (await VastProvider(VastSettings(api_key=KEY, server_url=vast.url)).search(
            Limits(1, 3, 2, 16, 12.1, 0.98, 40)))[0], label_for(run["id"]), None)
    # An instance labelled for a run this daemon does not know is another daemon's: left alone.
    foreign = await VastProvider(VastSettings(api_key=KEY, server_url=vast.url)).create(
        (await VastProvider(VastSettings(api_key=KEY, server_url=vast.url)).search(
            Limits(1, 3, 2, 16, 12.1, 0.98, 40)))[0], label_for("f" * 32), None)
    assert len(vast.alive()) == 3
    await client.close()
    vast.refuse_destroy = False
    client = await app_client(aiohttp_client, settings)  # the next start
    after = await wait_run(client, run["id"], lambda b: b["remote"]["state"] == "destroyed")
    for _ in range(400):  # the listing sweep follows the recorded one
        if vast.alive() == [int(foreign.id)]:
            break
        await asyncio.sleep(0.05)
    assert vast.alive() == [int(foreign.id)]
    assert int(stray.id) in vast.destroyed
    after = await wait_run(client, run["id"], lambda b: any("reaper" in w for w in b["warnings"]))
    await VastProvider(VastSettings(api_key=KEY, server_url=vast.url)).destroy(foreign.id)
    assert json.dumps(after).count(KEY) == 0


async def test_a_run_reattached_after_a_restart_still_fetches_its_checkpoints_through_the_bucket(
        tmp_path: Path, client_key, vast, dataset, trainer_env, s3_server, request,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.storage_fixtures import make_store
    from tests.test_storage_sync import remote_files

    store = make_store("s3", request, tmp_path)
    for name, value in store.env.items():  # the daemon's environment: the store's credentials (moto)
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    trainer_env.update({"AWS_ACCESS_KEY_ID": "AKIAMACHINEOWNKEY000", "AWS_SECRET_ACCESS_KEY": "machine-own-wrong",
                        "AWS_ENDPOINT_URL": s3_server.endpoint, "FAKE_KOHYA_STEP_SECONDS": "0.3"})
    ssh_host = FakeHost(tmp_path / "machine", [Path(f"{client_key}.pub").read_text()], "ssh-host", trainer_env)
    install_kohya(ssh_host.home)
    await ssh_host.start()
    port, storage = free_port(), f'\n[storage]\nurl = "{store.url}"\n'
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            proc = start_daemon(tmp_path, port, vast, client_key, ssh_host, storage)
            try:
                await wait_up(http, url, proc)
                async with http.post(f"{url}/loras/train", json={
                        "datasetDir": str(dataset), "outputName": "spyke", "steps": 8, "saveEveryNSteps": 4,
                        "force": True, "remote": {"provider": "ssh"}}) as resp:
                    assert resp.status == 202, await resp.text()
                    run_id = (await resp.json())["id"]
                await status(http, url, run_id, lambda b: b["step"] >= 2)  # killed before its first checkpoint
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
                before = set(remote_files(store, f"runs/{run_id}"))
                proc = start_daemon(tmp_path, port, vast, client_key, ssh_host, storage)
                await wait_up(http, url, proc)
                done = await status(http, url, run_id, lambda b: b["status"] in ENDED)
            finally:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        log = (tmp_path / "daemon.log").read_text()
        assert done["status"] == "succeeded", (done["error"], log[-3000:])
        assert done["remote"]["reattached"] >= 1
        assert sum("setsid nohup" in c for c in ssh_host.commands) == 1, "training was started again"
        through = remote_files(store, f"runs/{run_id}")
        # Every checkpoint saved after the restart, and the final file, came through the bucket, byte-identical.
        after = {c["fileName"] for c in done["checkpoints"]} - before
        assert after and after <= set(through), (after, sorted(through))
        assert "spyke.safetensors" in through and Path(done["finalFile"]).read_bytes() == through["spyke.safetensors"]
        assert "through the bucket failed" not in log and "come over SSH" not in log
    finally:
        await ssh_host.close()
