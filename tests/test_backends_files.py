"""A LoRA a remote backend lacks is copied there over SSH/SFTP (an in-process asyncssh server with keys
generated in tmp), checked by size and hash before ComfyUI can see it; a copy that does not check out
fails the job and leaves nothing on the server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config.backends import BackendSpec, parse_ssh_target
from sidecar.backends.transfer import TransferError, copy_model
from sidecar.config import Settings
from tests.fake_comfyui import DEFAULT_MODELS, FakeComfyUI
from tests.fake_sshd import FakeSshd
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status
from tests.test_backends_routing import NO_LORA, start_fake


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[FakeSshd]:
    server = FakeSshd(tmp_path / "remote", tmp_path / "keys")
    (tmp_path / "remote").mkdir()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def laptop_loras(tmp_path: Path) -> Path:
    folder = tmp_path / "laptop" / "loras"
    folder.mkdir(parents=True)
    (folder / "spyke_plasma_v1.safetensors").write_bytes(os.urandom(300_000))
    (folder / "other_v2.safetensors").write_bytes(os.urandom(1000))
    return folder


@pytest.fixture
async def attic(tmp_path: Path) -> AsyncIterator[FakeComfyUI]:
    # The remote ComfyUI's install is what the SSH server's SFTP root holds at remote/ComfyUI.
    fake = await start_fake(tmp_path / "remote", "ComfyUI", NO_LORA, step_delay=0.005, device="cuda")
    yield fake
    await fake.stop()


async def test_a_missing_lora_is_copied_checked_and_used_and_a_bad_copy_fails_the_job(
        aiohttp_client, tmp_path, sshd, attic, laptop_loras) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, backend_probe_interval=0.2,
        backends=[BackendSpec(name="attic", kind="comfyui", url=attic.url, local=False, tags=("pool",),
                              ssh=sshd.target("~/ComfyUI"), ssh_key=sshd.client_key_path,
                              ssh_known_hosts=sshd.known_hosts_path)])
    laptop = ScriptedBackend(models={"checkpoints": DEFAULT_MODELS["checkpoints"]}, folders={"loras": laptop_loras})
    client = await aiohttp_client(create_app(settings, laptop))

    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "steps": 2, "where": "attic",
                                            "loraId": "spyke_plasma_v1"})
    assert resp.status == 202, await resp.text()
    done = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["status"], done["backend"]) == ("succeeded", "attic"), done
    copied = tmp_path / "remote" / "ComfyUI" / "models" / "loras" / "spyke_plasma_v1.safetensors"
    assert copied.read_bytes() == (laptop_loras / "spyke_plasma_v1.safetensors").read_bytes()
    assert any(c.startswith("sha256sum") for c in sshd.commands)  # checked on the server

    sshd.lie_about_hash = True  # the next copy arrives corrupted
    resp = await client.post("/jobs", json={"prompt": "x", "steps": 2, "where": "attic", "loraId": "other_v2"})
    assert resp.status == 202, await resp.text()
    failed = await wait_status(client, (await resp.json())["id"], {"succeeded", "failed"}, timeout=20)
    assert failed["error"]["code"] == "model_transfer_failed" and "does not match" in failed["error"]["message"]
    assert sorted(p.name for p in copied.parent.iterdir()) == ["spyke_plasma_v1.safetensors"]  # no part file
    assert attic.prompt_posts == 1  # the failed copy never reached ComfyUI


async def test_copy_skips_an_identical_file_and_hashes_locally_without_sha256sum(tmp_path, sshd, laptop_loras) -> None:
    target = parse_ssh_target(sshd.target("ComfyUI"))
    src = laptop_loras / "other_v2.safetensors"
    keys = {"key": str(sshd.client_key_path), "known_hosts": str(sshd.known_hosts_path)}
    sshd.no_sha256sum = True  # read back over SFTP instead
    assert await copy_model(target, src, "loras", src.name, **keys) is True
    assert await copy_model(target, src, "loras", src.name, **keys) is False  # same size and hash: not resent
    assert (tmp_path / "remote" / "ComfyUI" / "models" / "loras" / src.name).read_bytes() == src.read_bytes()
    with pytest.raises(TransferError):  # a host key that is not the one known: refused, nothing sent
        await copy_model(target, src, "loras", "x.safetensors", key=keys["key"],
                         known_hosts=str(_empty(tmp_path / "empty_known_hosts")))


def _empty(path: Path) -> Path:
    path.write_text("")
    return path
