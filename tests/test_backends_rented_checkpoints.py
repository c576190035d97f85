"""Checkpoints for a rented ComfyUI from the `[storage]` bucket (moto's S3 server, s3fs on the instance):
one pushed with `sidecar sync push checkpoints` is fetched by the instance itself (sha256 checked there);
one changed since the push and one never pushed go over SFTP, as before."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sidecar.api.app import create_app
from sidecar.config.storage import StorageSettings
from tests.fake_comfyui import DEFAULT_MODELS
from tests.scripted_backend import ScriptedBackend
from tests.storage_fixtures import make_store, s3_server  # noqa: F401  (fixture)
from tests.test_api_jobs import wait_status
from tests.test_backends_rented import settings_for, vast, wait_rental  # noqa: F401  (vast: the fixture)
from tests.test_storage_sync import Machine


async def test_a_pushed_checkpoint_comes_from_the_bucket_and_others_over_sftp(
        vast, aiohttp_client, tmp_path: Path, request, monkeypatch, s3_server) -> None:
    store = make_store("s3", request, tmp_path)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    checkpoints = tmp_path / "laptop" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("pushed.safetensors", "changed.safetensors"):
        (checkpoints / name).write_bytes(os.urandom(300_000))
    pushed = Machine(tmp_path / "sync", store).sync("push", "checkpoints", "--checkpoints-dir", str(checkpoints))
    assert pushed.exit_code == 0, pushed.output
    (checkpoints / "changed.safetensors").write_bytes(os.urandom(300_000))  # the bucket's copy is stale now
    (checkpoints / "local-only.safetensors").write_bytes(os.urandom(5000))  # never pushed
    # The instance's own keys are wrong: only the handed-over credentials can work there.
    vast.trainer_env.update({"AWS_ACCESS_KEY_ID": "AKIAMACHINEOWNKEY000", "AWS_SECRET_ACCESS_KEY": "wrong"})
    settings = settings_for(tmp_path, vast, python=sys.executable)
    settings = settings.model_copy(update={"storage": StorageSettings(url=store.url)})
    laptop = ScriptedBackend(models={"loras": []}, folders={"checkpoints": checkpoints})
    client = await aiohttp_client(create_app(settings, laptop))
    assert (await client.post("/backends/rent", json={"name": "gpu", "idleMinutes": 60})).status == 202
    assert (await wait_rental(client, "gpu", {"serving", "failed"}))["state"] == "serving"
    [instance_id] = vast.alive()
    host = vast.hosts[instance_id]
    assert "pushed.safetensors" not in DEFAULT_MODELS["checkpoints"]

    for name in ("pushed.safetensors", "changed.safetensors", "local-only.safetensors"):
        resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "gpu", "checkpoint": name})
        assert resp.status == 202, await resp.text()
        done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=30)
        assert (done["status"], done["backend"]) == ("succeeded", "gpu"), done.get("error")
        there = host.home / "ComfyUI" / "models" / "checkpoints" / name
        assert there.read_bytes() == (checkpoints / name).read_bytes()
    pulls = [c for c in host.commands if "agent.py" in c and " pull " in c]
    assert len(pulls) == 1  # only the one pushed and unchanged came from the bucket
    sftp_checked = [c for c in host.commands if c.startswith("sha256sum")]
    assert not any("pushed.safetensors" in c for c in sftp_checked)
    assert any("changed.safetensors" in c for c in sftp_checked)
    assert any("local-only.safetensors" in c for c in sftp_checked)
    assert not (host.home / ".sidecar-storage").exists()  # the credentials went at once
    for secret in store.secrets:
        assert not any(secret in c for c in host.commands)
