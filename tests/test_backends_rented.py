"""A ComfyUI rented on vast.ai joins the backends: the fake vast.ai server driven by the real `vastai` SDK,
its instance an in-process SSH server (`FakeHost`) whose loopback port 18188 is a stand-in ComfyUI
reached only by an SSH local port forward. The whole cycle (rent, tunnel, join, a LoRA copied over SFTP,
a job rendered there, idle, destroyed), the cost guard, an instance that never answers, and a daemon
killed while renting (reaped at the next start)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.cli import main
from sidecar.config import Settings
from sidecar.config.backends import VAST_COMFY_PORT, BackendSpec
from sidecar.config.remote import RemoteSettings, VastSettings
from tests.conftest_comfy import free_port
from tests.fake_comfyui import DEFAULT_MODELS, FakeComfyUI, make_comfy_home
from tests.fake_ssh_host import FakeHost, make_keypair
from tests.fake_vast import FakeVast, offer
from tests.processes import wait_up
from tests.storage_fixtures import s3_server  # noqa: F401  (fixture: moto's S3 server, for the bucket test)
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status

KEY = "vast-test-key-0123456789"
NO_LORA = {**DEFAULT_MODELS, "loras": []}
OFFERS = [offer(201, "RTX 3060", 12, 0.09), offer(202, "RTX 4090", 24, 0.39), offer(203, "RTX 3090", 24, 0.25)]


@pytest.fixture
async def vast(tmp_path: Path) -> AsyncIterator[FakeVast]:
    """vast.ai whose instances run a stand-in ComfyUI on their loopback port 18188 once they run."""
    fake = await FakeVast(tmp_path / "vast", KEY, offers=OFFERS, loading_reads=1).start()
    fake.comfys = {}

    async def comfy_starts(instance_id: int, host: FakeHost) -> None:
        comfy = FakeComfyUI(make_comfy_home(host.home / "ComfyUI", NO_LORA), step_delay=0.01, device_type="cuda")
        await comfy.start()
        fake.comfys[instance_id] = comfy
        host.ports[VAST_COMFY_PORT] = int(comfy.url.rsplit(":", 1)[1])
        host.services.append(comfy.stop)

    fake.on_running = comfy_starts
    yield fake
    alive = await fake.close()
    assert not alive, f"instances left billing on vast.ai: {alive}"


def settings_for(tmp_path: Path, vast: FakeVast, project: Path | None = None, **table) -> Settings:
    key = make_keypair(tmp_path / "keys")
    remote = RemoteSettings(vast=VastSettings(api_key=KEY, server_url=vast.url, identity_file=key),
                            poll_interval=0.05, status_interval=0.3)
    spec = {"name": "gpu", "kind": "vast", "idle_minutes": 0.05, "start_timeout": 20, "comfyui_dir": "~/ComfyUI",
            "max_price_per_hour": 0.5, **table}
    return Settings(data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.1,
                    backend_probe_interval=0.2, rent_check_interval=0.1, remote=remote, project_root=project,
                    backends=[BackendSpec.model_validate(spec)])


@pytest.fixture
def laptop_loras(tmp_path: Path) -> Path:
    folder = tmp_path / "laptop" / "loras"
    folder.mkdir(parents=True)
    (folder / "spyke_plasma_v1.safetensors").write_bytes(os.urandom(200_000))
    return folder


async def wait_rental(client, name: str, states: set[str], timeout: float = 20) -> dict:
    rental: dict = {}
    for _ in range(int(timeout / 0.05)):
        body = await (await client.get("/backends")).json()
        found = [r for r in body["rentals"] if r["name"] == name]
        if found:
            rental = found[-1]
            if rental["state"] in states:
                return rental
        await asyncio.sleep(0.05)
    raise AssertionError(f"rental {name} never reached {states}: {rental}")


async def test_rent_tunnel_join_copy_render_then_destroyed_when_idle(vast, aiohttp_client, tmp_path,
                                                                    laptop_loras) -> None:
    project = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    settings = settings_for(tmp_path, vast, project)
    laptop = ScriptedBackend(models={"checkpoints": DEFAULT_MODELS["checkpoints"]}, folders={"loras": laptop_loras})
    client = await aiohttp_client(create_app(settings, laptop))

    resp = await client.post("/backends/rent", json={"name": "gpu", "idleMinutes": 60})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["state"] in ("searching", "creating")
    rental = await wait_rental(client, "gpu", {"serving", "failed"})
    assert rental["state"] == "serving", rental
    # The cheapest offer under the limits with 24 GB: the 3090 at $0.25/h, not the 12 GB card.
    assert rental["gpu"] == "RTX 3090" and rental["pricePerHour"] == 0.25
    [instance_id] = vast.alive()
    create = next(r for r in vast.requests if r["method"] == "PUT" and r["path"].startswith("/api/v0/asks/"))
    assert create["json"]["image"].startswith("vastai/comfyui:")
    assert create["json"]["label"].startswith("plasma-sidecar-comfy-gpu-")
    # Nothing but SSH is published: no `-p` port in the create request, ComfyUI reached through the tunnel only.
    assert not [k for k in (create["json"].get("env") or {}) if k.startswith("-p")], create["json"]["env"]
    assert "--listen" not in create["json"]["env"]["COMFYUI_ARGS"]
    host = vast.hosts[instance_id]
    assert ("127.0.0.1", VAST_COMFY_PORT) in host.forwards

    backends = (await (await client.get("/backends")).json())["backends"]
    gpu = next(b for b in backends if b["name"] == "gpu")
    assert gpu["state"] == "up" and gpu["kind"] == "comfyui rented" and gpu["profile"] == "cuda-24gb"
    assert gpu["device"] == "cuda" and gpu["url"].startswith("http://127.0.0.1:")
    assert gpu["url"] != vast.comfys[instance_id].url  # this machine's end of the tunnel, not the server itself
    assert gpu["rental"]["instanceId"] == str(instance_id)
    health = await (await client.get("/health")).json()
    assert next(b for b in health["backends"] if b["name"] == "gpu")["rental"]["cost"] >= 0

    # A LoRA only the laptop has: copied over SFTP (checked by hash), then the job renders there.
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "steps": 3, "where": "gpu",
                                            "loraId": "spyke_plasma_v1"})
    assert resp.status == 202, await resp.text()
    done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
    copied = host.home / "ComfyUI" / "models" / "loras" / "spyke_plasma_v1.safetensors"
    assert copied.read_bytes() == (laptop_loras / "spyke_plasma_v1.safetensors").read_bytes()
    assert any(c.startswith("sha256sum") for c in host.commands)
    assert vast.comfys[instance_id].prompt_posts == 1
    image = await client.get(f"/jobs/{done['id']}/image")
    assert image.status == 200 and (await image.read())[:8] == b"\x89PNG\r\n\x1a\n"
    # A page of the project renders there too: the daemon writes the page's version from its image.
    resp = await client.post("/jobs", json={"page": {"chapter": 1, "page": 1}, "where": "gpu", "steps": 3})
    assert resp.status == 202, await resp.text()
    page = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
    assert (page["status"], page["backend"]) == ("succeeded", "gpu"), page.get("error")
    written = project / page["pageVersion"]["file"]
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and vast.comfys[instance_id].prompt_posts == 2

    # Released on request: out of routing, destroyed, its final cost kept.
    resp = await client.post("/backends/gpu/release")
    assert resp.status == 200, await resp.text()
    released = await resp.json()
    assert released["state"] == "destroyed" and released["cost"] > 0, released
    assert instance_id in vast.destroyed
    names = [b["name"] for b in (await (await client.get("/health")).json())["backends"]]
    assert "gpu" not in names
    again = await client.post("/backends/gpu/release")
    assert again.status == 404 and (await again.json())["error"]["code"] == "backend_not_found"

    # Rented again from its table, it goes away by itself when idle (idle_minutes = 0.05: 3 s).
    resp = await client.post("/backends/rent", json={"name": "gpu"})
    assert resp.status == 202, await resp.text()
    assert (await wait_rental(client, "gpu", {"serving", "failed"}))["state"] == "serving"
    gone = await wait_rental(client, "gpu", {"destroyed", "destroy_failed"}, timeout=15)
    assert "idle for 0.05 min" in gone["message"], gone
    assert vast.alive() == []


async def test_the_cost_guard_destroys_it_and_its_running_job_is_re_queued_elsewhere(vast, aiohttp_client,
                                                                                      tmp_path) -> None:
    # $0.25/h: $0.0002 is reached after about 3 s of rental.
    settings = settings_for(tmp_path, vast, max_total_cost=0.0002, idle_minutes=60)
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    assert (await client.post("/backends/rent", json={"name": "gpu"})).status == 202
    assert (await wait_rental(client, "gpu", {"serving", "failed"}))["state"] == "serving"
    [instance_id] = vast.alive()
    vast.comfys[instance_id].step_delay = 1.0  # a long job: the limit comes while it runs
    resp = await client.post("/jobs", json={"prompt": "x", "steps": 20, "where": "any"})
    job_id = (await resp.json())["id"]
    for _ in range(200):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["backend"] == "gpu" and job["status"] == "running":
            break
        await asyncio.sleep(0.05)
    else:
        pytest.skip(f"the job ran on {job['backend']}: the router preferred the laptop")
    # One more that only the rented backend may run, waiting behind the first.
    waiting = (await (await client.post("/jobs", json={"prompt": "y", "steps": 2, "where": "gpu"})).json())["id"]
    gone = await wait_rental(client, "gpu", {"destroyed", "destroy_failed"}, timeout=15)
    assert "max_total_cost" in gone["message"] and gone["cost"] >= 0.0002, gone
    assert instance_id in vast.destroyed
    done = await wait_status(client, job_id, {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"]) == ("succeeded", "local"), done  # re-queued once, elsewhere
    assert done["attempts"] == 1
    failed = await wait_status(client, waiting, {"succeeded", "failed"}, timeout=10)
    assert failed["status"] == "failed" and failed["error"]["code"] == "backend_gone", failed["error"]
    assert "max_total_cost" in failed["error"]["message"]


async def test_an_instance_that_never_answers_is_destroyed_at_its_start_timeout(aiohttp_client, tmp_path) -> None:
    vast = await FakeVast(tmp_path / "vast", KEY, offers=OFFERS, loading_reads=10**6).start()  # never runs
    try:
        settings = settings_for(tmp_path, vast, start_timeout=1.0)
        client = await aiohttp_client(create_app(settings, ScriptedBackend()))
        assert (await client.post("/backends/rent", json={"name": "gpu"})).status == 202
        failed = await wait_rental(client, "gpu", {"failed", "destroyed", "destroy_failed"}, timeout=15)
        assert failed["state"] == "failed" and "start_timeout of 1 s" in failed["message"], failed
        assert vast.alive() == [] and len(vast.destroyed) == 1
        # Money bounded: at most the price for the start timeout (plus a poll), never an open-ended bill.
        assert failed["cost"] <= 0.25 * 3 / 3600
    finally:
        assert await vast.close() == []


async def test_refusals_are_clear_and_rent_nothing(vast, aiohttp_client, tmp_path) -> None:
    settings = settings_for(tmp_path, vast, max_price_per_hour=0.05)  # every offer costs more
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    resp = await client.post("/backends/rent", json={"name": "gpu", "maxPricePerHour": 0.05})
    assert resp.status == 202
    failed = await wait_rental(client, "gpu", {"failed"})
    assert "No offer fits the limits" in failed["message"] and failed["instanceId"] is None
    bad = await client.post("/backends/rent", json={"name": "gpu", "idleMinutes": -1})
    assert bad.status == 400
    unknown = await client.post("/backends/rent", json={"name": "gpu", "colour": "red"})
    assert unknown.status == 400 and (await unknown.json())["error"]["code"] == "unknown_field"
    not_rented = await client.post("/jobs", json={"prompt": "x", "where": "gpu"})
    assert not_rented.status == 400
    assert "sidecar backends rent gpu" in (await not_rented.json())["error"]["message"]
    assert vast.instances == {}


def start_daemon(tmp_path: Path, port: int, vast: FakeVast, key: Path) -> subprocess.Popen[bytes]:
    """The real `sidecar serve` with a rentable table; embedded engine (never loaded: nothing renders)."""
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'engine = "embedded"\nrent_check_interval = 0.1\n\n[remote]\npoll_interval = 0.05\n\n'
        f'[remote.vast]\nserver_url = "{vast.url}"\nidentity_file = "{key}"\n\n'
        '[[backends]]\nname = "gpu"\nkind = "vast"\nstart_timeout = 600\nmax_price_per_hour = 0.5\n')
    with (tmp_path / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
             "--config", str(config)], env={**os.environ, "VAST_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT)


async def test_a_daemon_killed_while_renting_leaves_nothing_billing_after_its_next_start(
        vast, aiohttp_client, tmp_path) -> None:
    vast.loading_reads = 10**6  # still starting when the daemon dies
    key = make_keypair(tmp_path / "keys")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        proc = start_daemon(tmp_path, port, vast, key)
        try:
            await wait_up(http, url, proc)
            # The command asks the daemon, which owns the instance (--no-wait: back at once).
            rented = await asyncio.to_thread(CliRunner().invoke, main, ["backends", "rent", "gpu", "--no-wait",
                                                                       "--url", url])
            assert rented.exit_code == 0 and rented.output.startswith("gpu: searching"), rented.output
            for _ in range(400):
                if vast.instances:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # renting goes on: waiting for the instance to run
            proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
            await asyncio.to_thread(proc.wait, 10)
        finally:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
    [instance_id] = vast.alive()  # billing, with nobody left to use or destroy it
    settings = settings_for(tmp_path, vast)
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    gone = await wait_rental(client, "gpu", {"destroyed"}, timeout=15)
    assert "destroyed by the reaper at daemon start" in gone["message"], gone
    assert vast.alive() == [] and instance_id in vast.destroyed
    assert KEY not in (tmp_path / "daemon.log").read_text()
    here = str(client.make_url("")).rstrip("/")
    listed = await asyncio.to_thread(CliRunner().invoke, main, ["backends", "list", "--url", here])
    assert listed.exit_code == 0 and "rented gpu: destroyed" in listed.output, listed.output
    unknown = await asyncio.to_thread(CliRunner().invoke, main, ["backends", "release", "nope", "--url", here])
    assert unknown.exit_code == 2 and "backend_not_found" in unknown.output, unknown.output


async def test_without_the_pool_renting_is_refused_with_the_fix_and_the_list_has_the_one_backend(
        aiohttp_client, tmp_path) -> None:
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded"),
                                             ScriptedBackend()))
    resp = await client.post("/backends/rent", json={"provider": "vast"})
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_state" and 'kind = "vast"' in error["message"]
    listed = await (await client.get("/backends")).json()
    assert [b["name"] for b in listed["backends"]] == ["local"] and listed["rentals"] == [] and listed["cost"] == 0


async def test_an_instance_created_as_the_daemon_died_is_found_by_its_recorded_label(vast, aiohttp_client,
                                                                                    tmp_path) -> None:
    """What a daemon killed inside vast.ai's create call leaves: the rental recorded with its label, no id."""
    from sidecar.backends.rentals import RentalRecord, RentalStore, new_label
    from sidecar.remote.provider import Limits
    from sidecar.remote.state import RemoteState
    from sidecar.remote.vast import VastProvider

    settings = settings_for(tmp_path, vast)
    label = new_label("gpu")
    RentalStore(settings.data_dir).save([RentalRecord(settings.backends[0], RemoteState(
        provider="vast", state="creating", label=label))])
    provider = VastProvider(settings.remote.vast)
    [offer_] = [o for o in await provider.search(Limits(1, 1, 1, min_gpu_memory_gb=24)) if o.id == "203"]
    ours = await provider.create(offer_, label, "entrypoint.sh")
    other = await provider.create(offer_, new_label("gpu"), "entrypoint.sh")  # another data dir's: not ours
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    gone = await wait_rental(client, "gpu", {"destroyed"}, timeout=15)
    assert gone["instanceId"] == ours.id and "reaper" in gone["message"]
    assert vast.alive() == [int(other.id)]
    await provider.destroy(other.id)


async def test_a_dropped_tunnel_is_opened_again_on_the_same_port_and_the_backend_renders(vast, aiohttp_client,
                                                                                        tmp_path) -> None:
    settings = settings_for(tmp_path, vast, idle_minutes=60)
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    assert (await client.post("/backends/rent", json={"name": "gpu"})).status == 202
    assert (await wait_rental(client, "gpu", {"serving", "failed"}))["state"] == "serving"
    [instance_id] = vast.alive()
    host = vast.hosts[instance_id]
    before = next(b for b in (await (await client.get("/backends")).json())["backends"] if b["name"] == "gpu")
    forwards = len(host.forwards)
    assert host.drop_connections() >= 1  # the network drops: the SSH connection and its forward go
    for _ in range(200):  # reconnected (the pinned host key), the forward asked for again
        if host.connections and len(host.forwards) > forwards:
            break
        await asyncio.sleep(0.05)
    resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "gpu"})
    done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
    after = next(b for b in (await (await client.get("/backends")).json())["backends"] if b["name"] == "gpu")
    assert after["url"] == before["url"] and vast.alive() == [instance_id]


@pytest.mark.parametrize("scheme", ["file", "s3"])
async def test_a_lora_pushed_to_the_bucket_is_fetched_by_the_instance_and_one_not_pushed_goes_over_sftp(
        vast, aiohttp_client, tmp_path, laptop_loras, request, monkeypatch, scheme) -> None:
    from sidecar.config.storage import StorageSettings
    from tests.storage_fixtures import make_store
    from tests.test_storage_sync import Machine

    store = make_store(scheme, request, tmp_path)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    pushed = Machine(tmp_path / "sync", store).sync("push", "loras", "--loras-dir", str(laptop_loras))
    assert pushed.exit_code == 0, pushed.output
    (laptop_loras / "other_v2.safetensors").write_bytes(os.urandom(5000))  # not in the bucket
    # The instance's own environment: keys the store does not know; only the handed-over ones may work.
    vast.trainer_env.update({"AWS_ACCESS_KEY_ID": "AKIAMACHINEOWNKEY000", "AWS_SECRET_ACCESS_KEY": "wrong"})
    settings = settings_for(tmp_path, vast, python=sys.executable)
    settings = settings.model_copy(update={"storage": StorageSettings(url=store.url)})
    laptop = ScriptedBackend(models={"checkpoints": DEFAULT_MODELS["checkpoints"]}, folders={"loras": laptop_loras})
    client = await aiohttp_client(create_app(settings, laptop))
    assert (await client.post("/backends/rent", json={"name": "gpu", "idleMinutes": 60})).status == 202
    assert (await wait_rental(client, "gpu", {"serving", "failed"}))["state"] == "serving"
    [instance_id] = vast.alive()
    host = vast.hosts[instance_id]
    create = next(r for r in vast.requests if r["method"] == "PUT" and r["path"].startswith("/api/v0/asks/"))
    assert "pip install" in create["json"]["onstart"] and "fsspec" in create["json"]["onstart"]

    for lora in ("spyke_plasma_v1", "other_v2"):
        resp = await client.post("/jobs", json={"prompt": lora, "steps": 2, "where": "gpu", "loraId": lora})
        done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=30)
        assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
        there = host.home / "ComfyUI" / "models" / "loras" / f"{lora}.safetensors"
        assert there.read_bytes() == (laptop_loras / f"{lora}.safetensors").read_bytes()
    pulls = [c for c in host.commands if "agent.py" in c and " pull " in c]
    assert len(pulls) == 1  # the pushed one came from the bucket; the other over SFTP (hash-checked there)
    assert any(c.startswith("sha256sum") and "other_v2" in c for c in host.commands)
    assert not any("spyke_plasma_v1" in c and c.startswith("sha256sum") for c in host.commands)
    assert not (host.home / ".sidecar-storage").exists()  # the credentials went at once
    for secret in store.secrets:
        assert not any(secret in c for c in host.commands)
