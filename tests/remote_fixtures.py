"""Fixtures of the remote-training tests: a client key, an SSH "machine" (`FakeHost`) with kohya (the fake
trainer) installed, settings pointing at it, and the app. Teardown asserts nothing is left running on any
machine a test made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.config.remote import RemoteSettings, SshSettings, VastSettings
from tests.fake_ssh_host import FakeHost, install_kohya, make_keypair
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import make_dataset

POLL = 0.05


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    return make_keypair(tmp_path / "keys")


@pytest.fixture
def trainer_env(tmp_path: Path) -> dict[str, str]:
    """Knobs of the fake trainer on the machine, and files it reports through."""
    return {"FAKE_KOHYA_STEP_SECONDS": "0.03", "FAKE_KOHYA_ARGV_FILE": str(tmp_path / "argv.json"),
            "FAKE_KOHYA_PIDFILE": str(tmp_path / "trainer.pids")}


@pytest.fixture
async def ssh_host(tmp_path: Path, client_key: Path, trainer_env):
    host = FakeHost(tmp_path / "machine", [Path(str(client_key) + ".pub").read_text()], "ssh-host", trainer_env)
    install_kohya(host.home)
    await host.start()
    yield host
    leftover = host.processes()
    await host.close()
    assert not leftover, f"processes left running on the SSH host: {leftover}"


def hold_trainer(env: dict[str, str], step: int, trainer: str = "KOHYA") -> Path:
    """Make the fake trainer (FAKE_KOHYA_* or FAKE_AITK_*) of the next run started stay at `step` until the returned
    file exists (`.touch()` it): what a test does then happens while training is sure to be under way,
    however loaded the machine, instead of racing the trainer to its end."""
    gate = Path(env["FAKE_KOHYA_ARGV_FILE"]).parent / f"release-{trainer.lower()}-{step}"
    env[f"FAKE_{trainer}_HOLD_AT"], env[f"FAKE_{trainer}_HOLD_FILE"] = str(step), str(gate)
    return gate


def known_hosts_for(host: FakeHost, path: Path) -> Path:
    path.write_text(f"[127.0.0.1]:{host.port} {host.host_key.export_public_key().decode().strip()}\n")
    return path


def remote_settings(tmp_path: Path, client_key: Path, ssh_host: FakeHost | None = None,
                    vast_url: str | None = None, **vast: object) -> RemoteSettings:
    ssh = SshSettings()
    if ssh_host is not None:
        ssh = SshSettings(host="artist@127.0.0.1", port=ssh_host.port, identity_file=client_key,
                          known_hosts=known_hosts_for(ssh_host, tmp_path / "known_hosts"),
                          kohya_dir="~/sd-scripts", python="~/venv/bin/python", work_dir="~/plasma-runs")
    vast_settings = VastSettings(api_key="vast-test-key-0123456789", server_url=vast_url or "http://127.0.0.1:9",
                                 identity_file=client_key, start_timeout=30, **vast)
    return RemoteSettings(ssh=ssh, vast=vast_settings, poll_interval=POLL, stale_after=1.0, status_interval=0.3)


def make_settings(tmp_path: Path, remote: RemoteSettings) -> Settings:
    s = Settings(data_dir=tmp_path / "data", engine="embedded", remote=remote)
    base = s.models_path / "checkpoints"
    base.mkdir(parents=True, exist_ok=True)
    (base / s.checkpoint).write_bytes(b"not a real model: the fake trainer only checks it exists" * 10)
    return s


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dataset")


async def app_client(aiohttp_client, settings: Settings):
    return await aiohttp_client(create_app(settings, ScriptedBackend()))


async def submit(client, dataset: Path, remote: dict, **body) -> dict:
    payload = {"datasetDir": str(dataset), "outputName": "spyke", "steps": 6, "saveEveryNSteps": 2,
               "remote": remote, "force": True, **body}
    resp = await client.post("/loras/train", json=payload)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def wait_run(client, run_id: str, done, timeout: float = 30) -> dict:
    """Poll the run's status until `done(body)` (or a status in the set `done`)."""
    check = done if callable(done) else (lambda b: b["status"] in done)
    body: dict = {}
    for _ in range(int(timeout / 0.05)):
        body = await (await client.get(f"/loras/{run_id}/status")).json()
        if check(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never got there: {body}")
